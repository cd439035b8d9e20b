"""`pvt` sub-commands for dense prediction: ``make-data`` (the built-in shapes), ``eval-dense`` and
``predict-dense`` (checkpoints of ``pvt train --task detection|instance|segmentation``)."""

from __future__ import annotations

import argparse
import json


def _cmd_make_data(args: argparse.Namespace) -> int:
    from ..data.synthetic import make_shapes_dataset

    root = make_shapes_dataset(args.output, num_train=args.num_train, num_val=args.num_val, size=args.size,
                               max_objects=args.max_objects, seed=args.seed, overwrite=args.overwrite)
    print(f"shapes data set in {root}: COCO format under {root / 'coco'}, ADE20K format under {root / 'ade'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..tasks.inference import evaluate_dense

    batch_size = 2 if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: expected an integer >= 1")
    res = evaluate_dense(args.checkpoint, args.data, batch_size=batch_size, device=args.device,
                         workers=args.workers)
    if args.json:
        print(json.dumps(res))
        return 0
    for k, v in res.items():
        if k == "per_class_iou":
            print("per-class IoU: " + ", ".join(f"{n} {x:.1f}" for n, x in v.items()))
        else:
            print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..tasks.inference import predict_dense

    recs = predict_dense(args.checkpoint, args.images, out_dir=args.out_dir, score_thresh=args.score_thresh,
                         device=args.device)
    text = json.dumps(recs, indent=1)
    if args.json_out:
        from ..io import atomic_write

        with atomic_write(args.json_out, "w") as f:
            f.write(text)
    print(text)
    return 0


def register(sub) -> None:
    """Add this module's sub-commands to the pvt parser."""
    p = sub.add_parser("make-data", help="write the built-in shapes data set (COCO + ADE20K formats)")
    p.add_argument("--output", default=None, help="folder (default: $PVT_CACHE/shapes or ~/.cache/pvt/shapes)")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a folder made with other parameters")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("eval-dense", help="box/mask mAP or mIoU of a detection/instance/segmentation checkpoint")
    p.add_argument("--checkpoint", required=True, help="a .safetensors written by pvt train, or its run folder")
    p.add_argument("--data", help="data folder (default: the data it was trained on)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict-dense", help="draw boxes, masks or class maps of a dense checkpoint over images")
    p.add_argument("--checkpoint", required=True, help="a .safetensors written by pvt train, or its run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out-dir", default="predictions", help="where <stem>_pred.png go (default: predictions)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detections below this score are dropped")
    p.add_argument("--json-out", help="also write the JSON records to this file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_predict)
