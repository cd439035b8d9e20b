"""`pvt convert SRC DST [--to FORMAT]`: any supported checkpoint -> any ecosystem's layout (default: this
library's own format, one safetensors file)."""

from __future__ import annotations

import argparse

from .command import command, lazy_names

_HOW_TO_LOAD = {
    "pvt": "pvt.create_model(name, pretrained='{dst}')",
    "hf": "transformers.AutoModelForImageClassification.from_pretrained('{dst}') (headless: AutoModel, "
          "PvtV2Backbone)",
    "timm": "timm.create_model('local-dir:{folder}', pretrained=True)",
    "official": "the whai362/PVT code: model.load_state_dict(torch.load('{dst}')['model'])",
    "mmdet": "an mmdetection config with a PyramidVisionTransformer[V2] backbone: load_from='{dst}'",
    "mmseg": "an mmsegmentation config with an mmdet.PyramidVisionTransformer[V2] backbone: load_from='{dst}'",
}


def _export_formats() -> dict[str, str]:
    from ..weights.writing import EXPORT_FORMATS

    return EXPORT_FORMATS


def _details() -> str:
    """``pvt convert --help``'s paragraph: the layouts read and written (their names live beside the
    torch code that converts them, so they load only when the help is shown)."""
    from ..weights.keys import FORMATS

    return ("Read a checkpoint in any supported layout and write it in the layout --to names (default: this "
            "library's own format, one .safetensors file whose metadata holds the model config). Accepted SRC: "
            + "; ".join(FORMATS.values())
            + ". SRC may be a file, a folder (HF: config.json + model.safetensors or pytorch_model.bin) or "
            "hf-hub:<repo id>; a detection or segmentation checkpoint gives its backbone. Nothing from SRC is "
            "executed (torch.load weights_only=True). Formats written: "
            + "; ".join(f"{k}: {v}" for k, v in _export_formats().items())
            + ".")


def register(sub) -> None:
    """Add ``convert`` to the pvt parser."""
    p = command(sub, "convert", run,
                "convert weights between this library, official, timm, HF transformers and OpenMMLab layouts",
                _details)
    p.add_argument("src", metavar="SRC", help="checkpoint file, folder or hf-hub:<repo id>")
    p.add_argument("dst", metavar="DST", help="output: a .safetensors file (pvt, timm), a folder (hf, timm) or a "
                                              ".pth file (official, mmdet, mmseg)")
    p.add_argument("--to", choices=lazy_names(_export_formats), default="pvt", metavar="FORMAT",
                   help="layout to write: %(choices)s (default: pvt)")
    p.add_argument(
        "--model", metavar="NAME", default=None,
        help="variant name (see `pvt models`); default: the one SRC records or its shapes fit",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, metavar="N",
        help="classifier size; default: the checkpoint's (another size drops its head)",
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..hub import resolve_source
    from ..weights import create_pretrained, read_checkpoint
    from ..weights.writing import Preprocessing, export_weights, source_labels

    if args.num_classes is not None and args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    ckpt = read_checkpoint(resolve_source(args.src))
    model = create_pretrained(args.model, ckpt, num_classes=args.num_classes)
    labels = source_labels(ckpt.extra, ckpt.source)
    if labels is not None and len(labels) != model.num_classes:
        labels = None  # the head was dropped or resized
    extra = dict(ckpt.extra)
    if extra.get("task") not in (None, "classification"):  # a detector's or segmenter's backbone: no longer that run
        extra = {k: v for k, v in extra.items() if k not in ("task", "task_model", "train_config", "class_names")}
    done = export_weights(model, args.to, args.dst, class_names=labels, force=args.force,
                          preprocessing=Preprocessing.of(model.config, ckpt.extra), extra=extra or None)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {done.path}: {model.variant_name}, {n:,} parameters, {model.num_classes} classes "
        f"(from {ckpt.format_description}: {ckpt.source})"
        + ("" if args.to == "pvt" else f" as {args.to}: {', '.join(p.name for p in done.files)}")
    )
    for note in done.notes:
        print(f"note: {note}")
    if args.to != "pvt":
        folder = done.files[0].parent
        print("load it with " + _HOW_TO_LOAD[args.to].format(dst=done.path, folder=folder if folder != Path() else "."))
    return 0
