"""The data pipeline alone, beside the model's training throughput: how many loader workers keep it fed.

    python benchmarks/data_pipeline.py --images 64 --models pvt_v2_b0 --batch 8
    python benchmarks/data_pipeline.py --jpegs /data/imagenet/train/n01440764      # real JPEGs
    python benchmarks/data_pipeline.py --device cuda --models pvt_v2_b0 pvt_v2_b2 --batch 128 --amp

Each stage runs in this one process with one torch thread (one loader worker = one core): read the file,
decode it (PIL), decode + DeiT's training transform at 224 (random-resized crop, flip, RandAugment,
normalise, random erasing), decode + the evaluation transform. With ``--device cuda`` it also times the
device path (``--device-augment``: nvJPEG decoding and the batched augmentation on the GPU). Then the
model's training step, and the workers that step would need per device: ``ceil(model / stage)``, with the
stage's images per CPU-second (what a dedicated core gives; wall-clock rates are printed too and fall
below it on a machine shared with other jobs).
``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from pvt.bench.data import (
    cores_needed,
    pipeline_stages,
    synthetic_jpegs,
    time_device_augment,
    time_stage,
    time_training,
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jpegs", help="a folder of JPEGs to time (default: synthetic ImageNet-like files)")
    ap.add_argument("--images", type=int, default=64, help="synthetic files to make (default 64)")
    ap.add_argument("--size", default="500x375", help="synthetic file size WxH (default 500x375, ImageNet's "
                                                      "most common)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=["pvt_v2_b0"], help="models whose training step to time "
                                                                      "(none: skip)")
    ap.add_argument("--batch", type=int, default=8, help="training batch for the model (default 8)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the training step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the training step (default: "
                                                            "torch's; the data stages always use one)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    if args.jpegs:
        files = sorted(p for p in Path(args.jpegs).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        files = synthetic_jpegs(Path(tempfile.gettempdir()) / "pvt-data-bench", args.images, (w, h))
    kb = sum(p.stat().st_size for p in files) / len(files) / 1000
    print(f"{len(files)} JPEGs, mean {kb:.0f} kB; CPU: {_cpu_model()}; torch {torch.__version__}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = [time_stage(name, fn, files, args.rounds) for name, fn in pipeline_stages(args.img_size).items()]
    if args.device != "cpu":
        results.append(time_device_augment(files, args.device, img_size=args.img_size, rounds=args.rounds))
    torch.set_num_threads(args.threads or threads)
    models = [time_training(m, args.batch, args.img_size, args.device, args.steps, args.rounds, args.amp)
              for m in args.models]

    width = max(len(r.name) for r in results + models)
    print(f"\n{'stage (one process, one thread)':<{width}}  images/s  images/CPU-s")
    for r in results:
        print(f"{r.name:<{width}}  {r.images_per_s:8.1f}  {r.images_per_cpu_s:12.1f}")
    per_core = results[2].images_per_cpu_s  # a dedicated core: the rate per CPU second
    for m in models:
        print(f"{m.name:<{width}}  {m.images_per_s:8.1f}  {m.images_per_cpu_s:12.1f}   -> "
              f"{cores_needed(m.images_per_s, per_core)} loader workers per device at {per_core:.0f} images/s each")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": _cpu_model(), "torch": torch.__version__, "files": len(files), "mean_kB": kb,
            "stages": {r.name: {"images_per_s": r.images_per_s, "images_per_cpu_s": r.images_per_cpu_s}
                       for r in results},
            "models": {m.name: {"images_per_s": m.images_per_s, "images_per_cpu_s": m.images_per_cpu_s}
                       for m in models},
        }, indent=1))


if __name__ == "__main__":
    main()
