"""`pvt convert SRC DST [--to FORMAT]`: any supported checkpoint -> any ecosystem's layout (default: this
library's own format, one safetensors file)."""

from __future__ import annotations

import argparse

from ..base.constants import FILE_LIMITS
from ..weights.formats import EXPORT_FORMATS, FORMATS
from .command import command
from .options import bounded

_HOW_TO_LOAD = {
    "pvt": "pvt.create_model(name, pretrained='{dst}')",
    "hf": "transformers.AutoModelForImageClassification.from_pretrained('{dst}')",
    "timm": "timm.create_model('local-dir:{folder}', pretrained=True)",
    "official": "the whai362/PVT code: model.load_state_dict(torch.load('{dst}')['model'])",
    "mmdet": "an mmdetection config with a PyramidVisionTransformer[V2] backbone: load_from='{dst}', or the "
             "backbone's init_cfg=dict(type='Pretrained', checkpoint='{dst}')",
    "mmseg": "an mmsegmentation config with an mmdet.PyramidVisionTransformer[V2] backbone: load_from='{dst}', or "
             "the backbone's init_cfg=dict(type='Pretrained', checkpoint='{dst}')",
}


def _details() -> str:
    """``pvt convert --help``'s paragraph: the layouts read and written."""
    return ("Read a checkpoint in any supported layout and write it in the layout --to names (default: this "
            "library's own format, one .safetensors file whose metadata holds the model config). Accepted SRC: "
            + "; ".join(FORMATS.values())
            + ". SRC may be a file, a folder (HF: config.json + model.safetensors or pytorch_model.bin) or "
            "hf-hub:<repo id>; a detection or segmentation checkpoint gives its backbone (so does a transformers "
            "model saved with save_pretrained whose config.json has a PVT backbone_config, e.g. Deformable DETR). "
            "Nothing from SRC is "
            "executed (torch.load weights_only=True). Formats written: "
            + "; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items())
            + ".")


def register(sub) -> None:
    """Add ``convert`` to the pvt parser."""
    p = command(sub, "convert", run,
                "convert weights between this library, official, timm, HF transformers and OpenMMLab layouts",
                _details)
    p.add_argument("src", metavar="SRC", help="checkpoint file, folder or hf-hub:<repo id>")
    p.add_argument("dst", metavar="DST", help="output: a .safetensors file (pvt, timm), a folder (hf, timm) or a "
                                              ".pth file (official, mmdet, mmseg)")
    p.add_argument("--to", choices=list(EXPORT_FORMATS), default="pvt", metavar="FORMAT",
                   help="layout to write: %(choices)s (default: pvt)")
    p.add_argument(
        "--model", metavar="NAME", default=None,
        help="variant name (see `pvt models`); default: the one SRC records or its shapes fit",
    )
    p.add_argument(
        "--num-classes", default=None, metavar="N",
        **bounded(int, 0, FILE_LIMITS["num_classes"], "classifier size; default: the checkpoint's (another size "
                                                      "drops its head)"),
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def _task_model(src: str):
    """The SegFormer / GLPN model SRC holds (a transformers Segformer / GLPN folder, or a ``pvt train`` run of
    such a model), else None: those convert to ``--to hf`` as whole models (:mod:`pvt.dense.hf`)."""
    from pathlib import Path

    from ..base.io import read_json
    from ..dense.hf import load_hf_task_model
    from ..weights.checkpoint import read_header
    from ..weights.run_folder import RunFolder, resolve_checkpoint

    p = Path(src).expanduser()
    if (p / "config.json").is_file() and not RunFolder(p).best.is_file():
        try:
            kind = read_json(p / "config.json").get("model_type")
        except (OSError, ValueError):  # not this kind of folder: the generic readers say what is wrong
            return None
        return load_hf_task_model(p) if kind in ("segformer", "glpn") else None
    try:
        header = read_header(resolve_checkpoint(p))
    except (FileNotFoundError, ValueError, OSError):
        return None
    name = str(((header or ({}, {}))[0]).get("task_model", ""))
    if not name.startswith(("segformer_", "glpn_")):
        return None
    from ..tasks import load_trained

    trained = load_trained(p)
    trained.model.class_names = list(trained.task.class_names)
    return trained.model


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..weights import create_pretrained, read_checkpoint
    from ..weights.hub import resolve_source
    from ..weights.writing import Preprocessing, export_weights, source_labels

    if args.num_classes is not None and args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    task_model = _task_model(args.src)
    if task_model is not None:
        from ..dense.hf import save_hf_task_model

        if args.to != "hf":
            raise ValueError(f"{args.src}: a SegFormer / GLPN model converts with --to hf (transformers' folder) only")
        done = save_hf_task_model(task_model.cpu(), args.dst, force=args.force)
        n = sum(p.numel() for p in task_model.parameters())
        print(f"wrote {done}: {type(task_model).__name__}, {n:,} parameters, as transformers' "
              f"{'GLPN' if type(task_model).__name__ == 'GLPN' else 'Segformer'} folder (config.json, model.safetensors)")
        return 0
    src = resolve_source(args.src)
    ckpt = read_checkpoint(src)
    model = create_pretrained(args.model, ckpt, num_classes=args.num_classes)
    labels = source_labels(ckpt.extra, ckpt.source)
    if labels is not None and len(labels) != model.num_classes:
        labels = None  # the head was dropped or resized
    extra = dict(ckpt.extra)
    if extra.get("task") not in (None, "classification"):  # a detector's or segmenter's backbone: no longer that run
        extra = {k: v for k, v in extra.items() if k not in ("task", "task_model", "train_config", "class_names")}
    done = export_weights(model, args.to, args.dst, class_names=labels, force=args.force,
                          preprocessing=Preprocessing.of(model.config, ckpt.extra), extra=extra or None,
                          source=src)
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
        how = _HOW_TO_LOAD[args.to] if args.to != "hf" or model.num_classes else _hf_headless(model.config)
        print("load it with " + how.format(dst=done.path, folder=folder if folder != Path() else "."))
    return 0


def _hf_headless(cfg) -> str:
    """How transformers loads a headless ``--to hf`` folder: v2 also as ``PvtV2Backbone`` (every stage's map);
    transformers has no backbone class for PVT v1, only ``PvtModel`` (the last stage's tokens)."""
    from ..weights.hf_config import hf_model_type

    if hf_model_type(cfg) == "pvt_v2":
        return ("transformers.AutoModel.from_pretrained('{dst}'), or transformers.PvtV2Backbone.from_pretrained('{dst}') "
                "for the four stage maps")
    return ("transformers.AutoModel.from_pretrained('{dst}') (PvtModel: transformers has no backbone class for "
            "PVT v1)")
