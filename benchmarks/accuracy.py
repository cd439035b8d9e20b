"""Accuracy of the lower-precision inference paths against float32.

Trained checkpoints (``--checkpoint``, any number; classification runs written by ``pvt train``): for
each precision (bfloat16, int8 with dynamic ranges, int8 calibrated on ``--calibration`` images, by
default the checkpoint's own training split, and the same with every linear layer int8), the share of held-out images whose top-1 class equals
float32's (agreement) and the held-out top-1 accuracy beside float32's.

Random weights (``--variants``, default every registered variant): logits cosine similarity and max
|difference| of each precision against float32 on a random batch (int8 calibrated on other random
images).

    python benchmarks/accuracy.py --checkpoint runs/demo/best.safetensors --variants all
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pvt.accel import accelerate
from pvt.accel.quant import quantize

PRECISIONS = ("bfloat16", "int8-dynamic", "int8-static", "int8-static-all")
"""int8-static-all: every linear layer int8 (min_width=0), as on CPUs without native bf16; the others
take the library's default for this CPU."""


def _variant(model: torch.nn.Module, precision: str, calibration: torch.Tensor) -> torch.nn.Module:
    m = copy.deepcopy(model)
    if precision == "bfloat16":
        return accelerate(m, precision="bfloat16")
    calibrated = precision.startswith("int8-static")
    return quantize(m, calibration if calibrated else None, min_width=0 if precision.endswith("-all") else None)


def trained(checkpoint: str, calibration: str | None, images: int, batch_size: int) -> None:
    from pvt.tasks import calibration_batch, load_trained

    run = load_trained(checkpoint, device="cpu")
    task = run.task
    folder = calibration or str(Path(task.eval_dataset("val").root).parent / "train")
    cal = calibration_batch(folder, task.input_transform(), images)
    ds = task.eval_dataset("val")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=task.collate_fn)
    models = {"float32": run.model, **{p: _variant(run.model, p, cal) for p in PRECISIONS}}
    preds: dict[str, list[torch.Tensor]] = {p: [] for p in models}
    targets = []
    with torch.inference_mode():
        for x, y, _ in loader:
            targets.append(y)
            for p, m in models.items():
                preds[p].append(m(x).argmax(1))
    y = torch.cat(targets)
    ref = torch.cat(preds["float32"])
    top1 = 100.0 * (ref == y).float().mean().item()
    print(f"\n{checkpoint}: {len(y)} held-out images, calibration {len(cal)} images from {folder}")
    print(f"{'precision':<14} {'agreement %':>12} {'top-1 %':>8} {'change':>7}")
    print(f"{'float32':<14} {100.0:>12.2f} {top1:>8.2f} {0:>+7.2f}")
    for p in PRECISIONS:
        got = torch.cat(preds[p])
        acc = 100.0 * (got == y).float().mean().item()
        print(f"{p:<14} {100.0 * (got == ref).float().mean().item():>12.2f} {acc:>8.2f} {acc - top1:>+7.2f}")


def random_weights(variants: list[str], size: int, batch: int) -> None:
    import pvt

    print(f"\nrandom weights, batch {batch} at {size}x{size} (int8-static calibrated on 8 other random images)")
    print(f"{'variant':<16} " + " ".join(f"{p + ' cos':>18} {'max|diff|':>9}" for p in PRECISIONS))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    cal = torch.randn(8, 3, size, size, generator=g)
    for name in variants:
        torch.manual_seed(0)
        model = pvt.create_model(name).eval()
        variants = {p: _variant(model, p, cal) for p in PRECISIONS}
        with torch.inference_mode():
            ref = model(x)
            cells = []
            for p in PRECISIONS:
                out = variants[p](x)
                cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
                cells.append(f"{cos:>18.6f} {(out - ref).abs().max().item():>9.2e}")
        print(f"{name:<16} " + " ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", nargs="*", default=[], help="classification checkpoints written by pvt train")
    ap.add_argument("--calibration", help="int8-static calibration images (default: the checkpoint's train split)")
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--variants", nargs="*", default=[], help="registered names, or 'all'")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--random-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for ckpt in args.checkpoint:
        trained(ckpt, args.calibration, args.calibration_images, args.batch_size)
    if args.variants:
        import pvt

        names = pvt.list_models() if args.variants == ["all"] else args.variants
        random_weights(names, args.size, args.random_batch)


if __name__ == "__main__":
    main()
