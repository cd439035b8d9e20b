"""``pvt make-data``: write the built-in shapes data set (COCO and ADE20K layouts) to a folder."""

from __future__ import annotations

import argparse


def _cmd_make_data(args: argparse.Namespace) -> int:
    from ..data.synthetic import make_shapes_dataset

    root = make_shapes_dataset(args.output, num_train=args.num_train, num_val=args.num_val, size=args.size,
                               max_objects=args.max_objects, seed=args.seed, overwrite=args.overwrite)
    print(f"shapes data set in {root}: COCO format under {root / 'coco'}, ADE20K format under {root / 'ade'}")
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
