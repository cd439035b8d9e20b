"""`pvt convert SRC DST`: any supported checkpoint -> this library's own format (one safetensors file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..weights.keys import FORMATS


def register(sub) -> None:
    """Add ``convert`` to the pvt parser."""
    p = sub.add_parser(
        "convert",
        help="convert official / timm / HF transformers weights to this library's format",
        description=(
            "Read a checkpoint in any supported layout and write it in this library's own format: one "
            ".safetensors file whose metadata holds the model config. Accepted SRC: "
            + "; ".join(FORMATS.values())
            + ". SRC may be a file, a folder (HF: config.json + model.safetensors or pytorch_model.bin) or "
            "hf-hub:<repo id>. Nothing from SRC is executed (torch.load weights_only=True)."
        ),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, folder or hf-hub:<repo id>")
    p.add_argument("dst", metavar="DST", help="output .safetensors file")
    p.add_argument(
        "--model", metavar="NAME", default=None,
        help="variant name (see `pvt models`); default: the one SRC records or its shapes fit",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, metavar="N",
        help="classifier size; default: the checkpoint's (another size drops its head)",
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import save_model
    from ..hub import resolve_source
    from ..weights import create_pretrained, read_checkpoint

    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"DST {dst} must end in .safetensors (the own format is one safetensors file)")
    if dst.exists() and not args.force:
        raise ValueError(f"{dst} exists; pass --force to overwrite it")
    if args.num_classes is not None and args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    ckpt = read_checkpoint(resolve_source(args.src))
    model = create_pretrained(args.model, ckpt, num_classes=args.num_classes)
    save_model(model, dst, variant=model.variant_name, extra=ckpt.extra or None)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {dst}: {model.variant_name}, {n:,} parameters, {model.num_classes} classes "
        f"(from {ckpt.format_description}: {ckpt.source})"
    )
    return 0
