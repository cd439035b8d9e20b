"""``pvt train``, ``pvt eval``, ``pvt predict`` and ``pvt demo`` (every task): thin wrappers of :mod:`pvt.api`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any

from ..base.constants import MAX_BATCH, MAX_WORKERS
from .command import command, precision_flags
from .options import bounded, describe_range

__all__ = ["register"]


def _config_fields() -> list[tuple[dataclasses.Field, Any, str]]:
    """Every config field once, ``(field, type hint, group title)``: the engine's, then each task config's
    (a field several tasks share, e.g. ``img_size``, under the first that declares it)."""
    from ..engine.config import TrainConfig, config_fields
    from ..tasks.configs import TASK_CONFIGS

    out, seen = [], {"task_options"}  # (task options: --opt KEY=VALUE)
    for cls in (TrainConfig, *TASK_CONFIGS):
        hints = typing.get_type_hints(cls)
        for f in config_fields(cls):
            if f.name not in seen:
                seen.add(f.name)
                owner = next(c for c in reversed(cls.__mro__) if f.name in vars(c).get("__annotations__", {}))
                out.append((f, hints[f.name], owner.__name__))
    return out


_GROUPS = {"TrainConfig": "training config: the engine's (schedule, optimiser, devices, run folder)",
           "BackboneConfig": "every task's input and backbone",
           "ClassificationConfig": "classification (augmentation, mixup / cutmix, smoothing, repeated augmentation)"}


def _config_flags(p: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per config field, the engine's and every task's (values checked by the
    configs: a task's flags are refused by the other tasks)."""
    groups: dict[str, Any] = {}
    for f, hint, owner in _config_fields():
        title = _GROUPS.get(owner, owner)
        group = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        kind = typing.get_args(hint)[0] if typing.get_args(hint) else hint
        rng = describe_range(kind, lo, hi) if kind in (int, float) and (lo, hi) != (None, None) else ""
        help_ = f.metadata.get("help", "")
        if default is not None and "default" not in help_:  # once: some helps say their default in words
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            help_ += f" (default: {shown}{'; ' + rng if rng else ''})"
        elif rng:
            help_ += f" ({rng})"
        if hint is bool or kind is bool:  # (bool | None: unset means "derived", e.g. repeated_aug)
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_)
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_,
                               metavar=_metavar(f.name, hint, f.metadata.get("choices")))


def _metavar(name: str, hint: Any, choices: tuple[str, ...] | None) -> str:
    """What a config flag's value looks like in ``--help``: its choices, ``N`` (an integer), ``X`` (a
    number), ``X,Y`` (a list of numbers), else the field's name."""
    if choices:
        return "{" + ",".join(choices) + "}"
    if typing.get_origin(hint) in (list, tuple):
        return "X,Y"
    kinds = set(typing.get_args(hint)) - {type(None)} or {hint}  # X | None: X
    if kinds == {int}:
        return "N"
    if kinds == {float}:
        return "X"
    return name.upper()


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..engine.config import parse_value

    names = {f.name for f, _, _ in _config_fields()}
    out = {k: v for k, v in vars(args).items() if k in names}
    if args.opt:
        opts: dict[str, Any] = {}
        for item in args.opt:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--opt {item!r}: expected KEY=VALUE")
            opts[key.replace("-", "_")] = parse_value(value)
        out["task_options"] = opts
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from ..api import train

    overrides = _overrides(args)
    if args.resume:
        if args.config:
            raise ValueError("--config cannot be combined with --resume (the run's own config.yaml is used)")
        result = train(resume=args.resume, quiet=args.quiet, fresh_optimizer=args.fresh_optimizer, **overrides)
    else:
        if args.fresh_optimizer:
            raise ValueError("--fresh-optimizer only applies with --resume RUN_DIR")
        result = train(args.config, quiet=args.quiet, **overrides)
    if args.quiet and result.best:
        print(json.dumps({"run_dir": str(result.run_dir), **result.best}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..api import evaluate
    from ..tasks import get_task

    r = evaluate(args.checkpoint, args.data, split=args.split, batch_size=args.batch_size, device=args.device,
                 workers=args.workers, model=args.model, precision=args.precision, calibration=args.calibration,
                 out_dir=args.out_dir, pictures=not args.no_pictures)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"precision: {r['precision']} ({r['precision_reason']})", file=sys.stderr)
    print(f"{r['model']} ({r['task']}) on {r['data']} ({r['images']} images at {r['img_size']}px): "
          + get_task(r["task"]).summary(r)
          + (f"  ({r['skipped_images']} unreadable images skipped)" if r["skipped_images"] else ""))
    if "per_class_iou" in r:
        print("per-class IoU: " + ", ".join(f"{n} {x:.1f}" for n, x in r["per_class_iou"].items()))
    if r.get("pictures"):
        print("pictures: " + "  ".join(r["pictures"].values()))
    return 0


def _print_predictions(preds: list[dict[str, Any]]) -> None:
    width = max(len(Path(p["image"]).name) for p in preds)
    for p in preds:
        tops = "  ".join(f"{t['class']} {100 * t['prob']:5.1f}%" for t in p["top"])
        print(f"{Path(p['image']).name:<{width}}  {tops}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..api import predict

    if args.precision != "float32":
        from ..accel.capability import resolve_precision
        from ..engine.distributed import resolve_device

        picked, reason = resolve_precision(args.precision, resolve_device(args.device).type)
        print(f"precision: {picked} ({reason})", file=sys.stderr)
    from ..tasks.explain import parse_query

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() and total > 1:
            print(f"\rpredict: {done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

    preds = predict(args.checkpoint, args.images, topk=args.topk, score_thresh=args.score_thresh,
                    out_dir=args.out_dir, device=args.device, precision=args.precision, calibration=args.calibration,
                    attention=args.attention, attention_block=args.attention_block, attention_head=args.attention_head,
                    attention_query=parse_query(args.attention_query), default_out_dir="predictions",
                    progress=progress)
    text = json.dumps(preds, indent=1)
    if args.json_out:
        from ..base.io import atomic_write

        with atomic_write(args.json_out, "w") as f:
            f.write(text)
    if args.json or "top" not in preds[0]:
        print(text)
    else:
        _print_predictions(preds)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..api import evaluate, predict
    from ..api import train as train_
    from ..data import digits_folder

    overrides: dict[str, Any] = {"model": "pvt_v2_b0", "output": args.output, "data_dir": args.data_dir}
    for key in ("epochs", "name", "threads", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    print("pvt demo: PVTv2-B0 on scikit-learn's handwritten digits (1,437 train / 360 held-out images, 32x32)")
    data = digits_folder(args.data_dir)  # written on first use; the run below reads the same folder
    print(f"digits: cached in {data} (--data-dir or $PVT_CACHE to move it)")
    t0 = time.perf_counter()
    run = train_(quiet=args.quiet, **overrides)
    took = time.perf_counter() - t0
    ips = sum(r["images_per_s"] for r in run.metrics) / max(1, len(run.metrics))
    print(f"\n1. trained {len(run.metrics)} epochs in {took:.0f}s ({ips:.0f} training images/s)")
    ev = evaluate(run.best_checkpoint, device=args.device or "auto")
    print(f"2. evaluated {run.best_checkpoint} on the {ev['images']} held-out images: "
          f"top-1 {ev['top1']:.2f}%  top-5 {ev['top5']:.2f}%  loss {ev['loss']:.4f}")
    val = data / "val"
    samples = [sorted((val / c).glob("*.png"))[0] for c in ("0", "3", "5", "7", "9")]
    print("3. top-3 predictions for a few held-out images:")
    for path, p in zip(samples, predict(run.best_checkpoint, samples, topk=3, device=args.device or "auto")):
        tops = "  ".join(f"{t['class']} {100 * t['prob']:5.1f}%" for t in p["top"])
        print(f"   val/{path.parent.name}/{path.name} (a {path.parent.name}):  {tops}")
    print(f"\nrun folder: {run.run_dir}  (metrics.jsonl, learning_curves.png, eval_val_confusion.png, "
          "eval_val_worst.png, best/last.safetensors, config.yaml)")
    print(f"next: pvt eval --checkpoint {run.best_checkpoint}   |   pvt predict --checkpoint {run.best_checkpoint} IMAGE")
    print("      pvt app   (a web page to try it: top-5, attention maps; needs the app extra, docs/app.md)")
    return 0


def register(sub) -> None:
    """Add ``train``, ``eval``, ``predict`` and ``demo`` to the pvt parser."""
    p = command(sub, "train", _cmd_train,
            "train a classifier (or --task NAME) on a folder or the built-in digits",
            "Train with the paper's recipe; every config value is a flag. Under "
            "`torchrun --nproc_per_node N` the same command trains with DDP. Each task starts from a named, "
            "complete preset, then --config YAML, then flags: classification `imagenet` (a --data folder: "
            "DeiT's recipe, the defaults shown below) or `digits` (the built-in digits: 32 px, 12 epochs, lr "
            "2e-3, no flips, mixup, cutmix or erasing); detection / instance `coco` or `shapes`; segmentation "
            "`ade20k` or `shapes`; depth `nyu` or `shapes` (docs/classification.md, docs/dense.md). Repeated "
            "augmentation is on under torchrun with more than one process and off in one process, as the "
            "official code; --repeated-aug / --no-repeated-aug force it.")
    p.add_argument("--config", metavar="YAML", help="a YAML file of config values (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last finished epoch "
                                                       "(only epochs, workers, threads, device, data-dir may change)")
    p.add_argument("--fresh-optimizer", action="store_true",
                   help="with --resume, when the run's state.pt is unreadable: continue from its last.safetensors "
                        "with a fresh optimiser state")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="task-specific option (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _config_flags(p)

    p = command(sub, "eval", _cmd_eval,
            "score a model trained by pvt train: top-1/top-5, box/mask mAP or mIoU")
    p.add_argument("--checkpoint", required=True, help="a .safetensors written by pvt train, or its run folder")
    p.add_argument("--data", help="data folder (default: the data it was trained on); classification also takes "
                                  "a folder of <split>/<class>/ or <class>/ images")
    p.add_argument("--split", default="val", help="classification: split folder inside --data (default: val)")
    p.add_argument("--model", help="fail unless the checkpoint is this variant")
    p.add_argument("--batch-size", default=None, **bounded(int, 1, MAX_BATCH,
                                                           "default: 64 (classification), 2 (dense tasks)"))
    p.add_argument("--workers", default=0, **bounded(int, 0, MAX_WORKERS, "data-loading processes"))
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out-dir", help="classification: where eval_<split>_confusion.png and eval_<split>_worst.png "
                                     "go (default: the checkpoint's run folder)")
    p.add_argument("--no-pictures", action="store_true", help="scores only: no confusion matrix or worst images")
    precision_flags(p)

    p = command(sub, "predict", _cmd_predict,
            "predict images with a model trained by pvt train: top-k classes, or drawn "
            "boxes / masks / class maps")
    p.add_argument("--checkpoint", required=True, help="a .safetensors written by pvt train, or its run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or folders of images (searched recursively); unreadable files are skipped "
                        "with a message")
    p.add_argument("--topk", default=5, **bounded(int, 1, 1000, "classes listed per image"))
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--out-dir", default=None,
                   help="where <stem>_pred.png drawings go (boxes, masks, class maps, top-k bars); default: "
                        "predictions/ for dense tasks and --attention, none for classification")
    p.add_argument("--attention", action="store_true",
                   help="also write <stem>_attention.png: each stage's attention over its reduced key map and the "
                        "rollout, over the image (docs/attention.md)")
    p.add_argument("--attention-block", default=-1,
                   **bounded(int, -1000, 1000, "block of each stage (default: its last)"))
    p.add_argument("--attention-head", type=int, default=None,
                   help="one head (where the stage has it; default: the mean of the heads)")
    p.add_argument("--attention-query", metavar="Y,X",
                   help="the query under this point, as fractions of the image (default: the mean of every query)")
    p.add_argument("--score-thresh", default=0.3,
                   **bounded(float, 0.0, 1.0, "detection: drop detections below this"))
    p.add_argument("--json-out", help="also write the JSON records to this file")
    precision_flags(p)

    p = command(sub, "demo", _cmd_demo,
            "train PVTv2-B0 on the built-in digits, evaluate, predict (a few minutes)")
    p.add_argument("--output", default="runs", help="parent folder of the run folder (default: runs)")
    p.add_argument("--name", help="run folder name")
    p.add_argument("--epochs", help="override the demo's epochs")
    p.add_argument("--threads", help="CPU threads for torch")
    p.add_argument("--device", help="device (default auto)")
    p.add_argument("--data-dir", help="cache folder for the digits (default ~/.cache/pvt)")
    p.add_argument("--quiet", action="store_true")
