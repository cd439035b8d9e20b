"""Resolution scaling of PVTv2-B2 (spatial-reduction attention), PVTv2-B2-Li (linear SRA) and
PVTv1-Small: inference latency and peak memory from 224x224 to 1024x1024 (and 800x1333, the COCO
test size), batch 1, float32. Writes a CSV and a log-log PNG and prints the fitted exponents
(slope of log time / log memory against log number of pixels).

    python benchmarks/scaling.py --threads 2 --out docs/scaling
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

from pvt.bench import Case, parse_size, run_case

MODELS = ("pvt_v2_b2", "pvt_v2_b2_li", "pvt_v1_small")
SIZES = ("224", "320", "448", "640", "800x1333", "1024")


def fit_exponent(pixels: list[float], values: list[float]) -> float:
    """Least-squares slope of log(values) against log(pixels)."""
    xs, ys = [math.log(p) for p in pixels], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/scaling"), help="writes OUT.csv and OUT.png")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in map(parse_size, args.sizes):
        for name in args.models:
            (r,) = run_case(Case(name, 1, size), ("pvt",), warmup=1, repeats=args.repeats)
            rows.append({"model": name, "height": size[0], "width": size[1], "pixels": size[0] * size[1],
                         "latency_ms": round(r.latency_ms, 2), "peak_mem_mb": round(r.peak_mem_mb or 0.0, 1),
                         "threads": r.threads})
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    exps = {}
    for name in args.models:
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["pixels"])
        px = [r["pixels"] for r in rs]
        exps[name] = (fit_exponent(px, [r["latency_ms"] for r in rs]), fit_exponent(px, [r["peak_mem_mb"] for r in rs]))
        print(f"{name}: time ~ pixels^{exps[name][0]:.2f}, peak memory ~ pixels^{exps[name][1]:.2f}")
    _plot(rows, exps, args.out.with_suffix(".png"))
    return 0


def _plot(rows: list[dict], exps: dict[str, tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, i in ((axes[0], "latency_ms", "latency (ms, batch 1)", 0), (axes[1], "peak_mem_mb", "peak memory (MB)", 1)):
        for name, (et, em) in exps.items():
            rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["pixels"])
            ax.loglog([r["pixels"] / 1e6 for r in rs], [r[key] for r in rs], "o-",
                      label=f"{name} (slope {(et, em)[i]:.2f})")
        ax.set_xlabel("input pixels (millions)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("PVT resolution scaling, float32 CPU (224^2 ... 1024^2, 800x1333)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
