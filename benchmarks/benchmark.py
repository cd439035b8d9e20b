"""Speed of PVT models beside timm, HF transformers, ONNX Runtime and OpenVINO (same weights).

A thin script around ``pvt benchmark`` so the README's commands work from a checkout:

    python benchmarks/benchmark.py pvt_v2_b0 pvt_v2_b2 pvt_v2_b2_li --compare -b 8 --threads 2 --repeats 7
    python benchmarks/benchmark.py pvt_v2_b2 --compare --precision float32 bfloat16 int8 --threads 1 2
    python benchmarks/benchmark.py pvt_v2_b0 --compare --mode train -b 16 --threads 2
    python benchmarks/benchmark.py pvt_v2_b2 --compare --dtype float32 bfloat16 -b 8 --threads 2

Every option of ``pvt benchmark --help`` applies.
"""

from __future__ import annotations

import sys

from pvt.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
