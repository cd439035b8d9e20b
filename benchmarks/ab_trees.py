"""In-process A/B of two source trees' accelerated models: same weights, same input, calls alternating.

Between processes the speed of one tree moves by more than most changes (docs/speed.md); in one process
the two models share the allocator, the caches and the machine's load, so their ratio is the steadier
figure. Each tree's ``src/pvt`` is copied (``git archive``; ``.`` is the working tree) into a scratch
folder as the packages ``pvt_a`` and ``pvt_b``.

    python benchmarks/ab_trees.py ac16a9f . pvt_v2_b0 -b 1 --pairs 100 --threads 1
    python benchmarks/ab_trees.py ac16a9f HEAD pvt_v2_b2 -b 8 --pairs 12 --precision int8

Prints B's speed over A's: the ratio of the median wall times, the median of the per-pair ratios and the
ratio of the median thread CPU times (the least disturbed by other processes at one thread), and the
largest logit difference.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def copy_tree(rev: str, package: str, into: Path) -> None:
    """``src/pvt`` of ``rev`` (``.``: the working tree) as the package ``package`` under ``into``, its
    absolute ``pvt`` imports renamed (older trees had some)."""
    target = into / package
    if rev == ".":
        shutil.copytree(REPO / "src" / "pvt", target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/pvt"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
        (into / "src" / "pvt").rename(target)
    for f in target.rglob("*.py"):
        text = f.read_text()
        renamed = re.sub(r"\b(from|import) pvt\b", rf"\1 {package}", text)
        if renamed != text:
            f.write_text(renamed)


def accelerated(pkg, name: str):
    """``pkg``'s accelerated model ``name`` in eval mode."""
    try:
        model = pkg.create_model(name, accelerate=True)
    except TypeError:  # trees before the plain create_model accelerated by default
        model = pkg.create_model(name)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="git revision of tree A (. for the working tree)")
    p.add_argument("b", help="git revision of tree B")
    p.add_argument("model", help="variant, e.g. pvt_v2_b0")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--pairs", type=int, default=40, help="timed calls of each tree, alternating")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=["float32", "int8"], default="float32",
                   help="int8: static, both calibrated on the same 8 random images")
    args = p.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="pvt-ab-"))
    try:
        copy_tree(args.a, "pvt_a", scratch)
        copy_tree(args.b, "pvt_b", scratch)
        sys.path.insert(0, str(scratch))
        pkgs = {k: importlib.import_module(f"pvt_{k}") for k in "ab"}
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        calibration = torch.randn(8, 3, args.img_size, args.img_size)
        b = accelerated(pkgs["b"], args.model)
        a = accelerated(pkgs["a"], args.model)
        a.load_state_dict(b.state_dict())
        if args.precision == "int8":  # after the weights are shared, so both calibrate the same model
            for k, m in (("a", a), ("b", b)):
                importlib.import_module(f"pvt_{k}.accel.quant").quantize(m, calibration)
        models = {"a": a, "b": b}
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        wall = {"a": [], "b": []}
        cpu = {"a": [], "b": []}
        with torch.inference_mode():
            diff = (a(x) - b(x)).abs().max().item()
            for _ in range(2):
                a(x), b(x)
            for i in range(args.pairs):
                for k in ("a", "b") if i % 2 == 0 else ("b", "a"):
                    w, c = time.perf_counter(), time.thread_time()
                    models[k](x)
                    cpu[k].append(time.thread_time() - c)
                    wall[k].append(time.perf_counter() - w)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    pairs = statistics.median(sa / sb for sa, sb in zip(wall["a"], wall["b"]))
    cpu_ratio = statistics.median(cpu["a"]) / statistics.median(cpu["b"])
    print(f"{args.model} batch {args.batch_size} {args.precision} {args.threads} thread(s), {args.pairs} pairs: "
          f"A {med['a'] * 1e3:.2f} ms, B {med['b'] * 1e3:.2f} ms; B over A: {med['a'] / med['b']:.3f} "
          f"(per pair {pairs:.3f}, CPU time {cpu_ratio:.3f}); max|diff| {diff:.2e}")


if __name__ == "__main__":
    main()
