"""Each implementation alone in a fresh process, under glibc's default allocator and under
``pvt.accel.runtime.tune_cpu_allocator()``: what a user's own inference process sees.

    python benchmarks/alone.py --models pvt_v2_b0 --threads 2 --repeats 15 --rounds 2

``pvt benchmark --compare --in-process`` times every implementation in one process, where one model's heap is the
next one's; here nothing is shared. Prints img/s and page faults per call (median over ``--repeats``
calls after 2 warm-up calls) for every (round, allocator, implementation).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

_CHILD = r"""
import sys, statistics, time
from pvt.accel.runtime import configure_allocator, page_faults
mode = configure_allocator(sys.argv[1])
import torch, pvt
impl, name, bs, size, threads, repeats = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:8])
torch.set_num_threads(threads)
if impl == "timm":
    import timm
    m = timm.create_model(name).eval()
else:
    m = pvt.create_model(name).eval()
x = torch.randn(bs, 3, size, size)
ts, fl = [], []
with torch.inference_mode():
    for _ in range(2):
        m(x)
    for _ in range(repeats):
        f0 = page_faults()
        t0 = time.perf_counter()
        m(x)
        ts.append(time.perf_counter() - t0)
        fl.append(page_faults() - f0)
print(f"{mode} {bs / statistics.median(ts):.2f} {statistics.median(fl):.0f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["pvt_v2_b0"])
    ap.add_argument("--impls", nargs="+", default=["pvt", "timm"], choices=["pvt", "timm"])
    ap.add_argument("-b", "--batch-size", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"{'round':>5} {'model':<14} {'allocator':<9} {'impl':<5} {'img/s':>8} {'faults/call':>12}")
    for r in range(args.rounds):
        for name in args.models:
            for mode in ("default", "tuned"):
                for impl in args.impls:
                    argv = [mode, impl, name, args.batch_size, args.img_size, args.threads, args.repeats]
                    out = subprocess.run([sys.executable, "-c", _CHILD, *map(str, argv)], capture_output=True,
                                         text=True, check=True).stdout.split()
                    print(f"{r + 1:>5} {name:<14} {out[0]:<9} {impl:<5} {float(out[1]):>8.2f} {int(out[2]):>12}",
                          flush=True)


if __name__ == "__main__":
    main()
