"""First start vs second start of ``pvt.accelerate(model, compile=True)``: one fresh process per start,
both on the same Inductor cache folder (empty before the first), timing the first call (the compile)
and then a few calls of the compiled model.

    python benchmarks/compile_start.py pvt_v2_b0 -b 8 --repeats 3 --cache /tmp/pvt-inductor-fresh
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _start(model_name: str, batch: int, repeats: int) -> dict:
    """One start, in this process: build, compile, first call, then ``repeats`` timed calls."""
    import torch

    from pvt.accel import accelerate
    from pvt.models.registry import create_model

    t0 = time.perf_counter()
    model = accelerate(create_model(model_name, accelerate=False).eval(), compile=True)
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        t1 = time.perf_counter()
        model(x)
        first = time.perf_counter() - t1
        times = []
        for _ in range(repeats):
            t2 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t2)
    times.sort()
    return {"build_s": round(t1 - t0, 2), "first_call_s": round(first, 2),
            "median_call_ms": round(1e3 * times[len(times) // 2], 1), "note": model.acceleration.note}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="pvt_v2_b0")
    ap.add_argument("-b", "--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", required=True, help="Inductor cache folder (emptied first)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_start(args.model, args.batch_size, args.repeats)))
        return
    shutil.rmtree(args.cache, ignore_errors=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=args.cache)
    for start in ("first", "second"):
        load0 = Path("/proc/loadavg").read_text().split()[0]
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, args.model, "-b", str(args.batch_size), "--repeats",
                               str(args.repeats), "--cache", args.cache, "--child"], env=env, capture_output=True,
                              text=True, check=True)
        got = json.loads(done.stdout.strip().splitlines()[-1])
        load1 = Path("/proc/loadavg").read_text().split()[0]
        print(f"{start} start: process {time.perf_counter() - t0:.1f} s, {got} (load average {load0} -> {load1})",
              flush=True)


if __name__ == "__main__":
    main()
