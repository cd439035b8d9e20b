"""Benchmark tooling: throughput, latency, peak memory and page faults of PVT models, beside timm's and HF
transformers' implementations holding the same weights, and beside an exported ONNX file in onnxruntime.

* :mod:`.timing`: interleaved timing rounds, per-call page faults, peak memory of one call.
* :mod:`.peers`: timm's and HF's PVT v2 built with our weights.
* :mod:`.cases`: :class:`Case`, :class:`Result`, the timed step, :func:`run_case`, the results table.
* :mod:`.onnx`: :func:`run_onnxruntime` (in this process, beside our model).
* :mod:`.runtimes`: ours, timm, HF, ONNX Runtime and OpenVINO in float32 / bfloat16 / int8, each in its
  own process, alternating, optionally with busy cores (:func:`benchmark_runtimes`).

``import pvt`` does not load this package; ``pvt benchmark`` and the scripts in ``benchmarks/`` do.
"""

from .cases import (
    DTYPES,
    Case,
    Result,
    build_model,
    compare_outputs,
    format_results,
    is_dense,
    make_step,
    parse_size,
    run_case,
)
from .onnx import run_onnxruntime
from .peers import IMPLS, reference_model
from .timing import peak_memory, time_interleaved

__all__ = [
    "Case",
    "Result",
    "DTYPES",
    "IMPLS",
    "reference_model",
    "make_step",
    "build_model",
    "is_dense",
    "time_interleaved",
    "peak_memory",
    "compare_outputs",
    "run_case",
    "format_results",
    "parse_size",
    "run_onnxruntime",
]
