"""``pvt make-data``: write the built-in shapes data set (COCO and ADE20K layouts) to a folder;
``pvt make-shards``: write an ImageFolder tree as WebDataset tar shards."""

from __future__ import annotations

import argparse

from ..base.constants import MAX_BUILTIN_IMAGES, MAX_IMG_SIZE, MAX_OBJECTS
from .command import command
from .options import bounded


def _cmd_make_data(args: argparse.Namespace) -> int:
    from ..data.synthetic import make_shapes_dataset

    root = make_shapes_dataset(args.output, num_train=args.num_train, num_val=args.num_val, size=args.size,
                               max_objects=args.max_objects, seed=args.seed, overwrite=args.overwrite)
    print(f"shapes data set in {root}: COCO format under {root / 'coco'}, ADE20K format under {root / 'ade'}")
    return 0


def _cmd_make_shards(args: argparse.Namespace) -> int:
    import sys
    import time

    from ..data.shards import write_shards
    from ..engine.signals import stop_signals

    t0 = time.perf_counter()

    def progress(split: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{split}: {done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

    with stop_signals():  # SIGTERM as Ctrl-C: write_shards then removes what it wrote
        index = write_shards(args.folder, args.out, shard_size=args.shard_size, shuffle=args.shuffle,
                             seed=args.seed, splits=tuple(args.splits.split(",")), progress=progress)
    for split, info in index["splits"].items():
        skipped = f", {len(info['unreadable'])} unreadable files left out" if info["unreadable"] else ""
        print(f"{split}: {info['count']} images of {len(index['classes'])} classes in {len(info['shards'])} shards"
              f"{' (shuffled, seed ' + str(info['seed']) + ')' if info['shuffled'] else ''}{skipped}")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s; train from it with: pvt train --data {args.out}")
    return 0


def register(sub) -> None:
    """Add this module's sub-commands to the pvt parser."""
    p = command(sub, "make-data", _cmd_make_data,
            "write the built-in shapes data set (COCO + ADE20K formats)")
    p.add_argument("--output", default=None, help="folder (default: $PVT_CACHE/shapes or ~/.cache/pvt/shapes)")
    p.add_argument("--num-train", default=200, **bounded(int, 1, MAX_BUILTIN_IMAGES, "training images"))
    p.add_argument("--num-val", default=50, **bounded(int, 1, MAX_BUILTIN_IMAGES, "validation images"))
    p.add_argument("--size", default=128, **bounded(int, 32, MAX_IMG_SIZE, "image side in pixels"))
    p.add_argument("--max-objects", default=4, **bounded(int, 1, MAX_OBJECTS, "most objects per image"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a folder made with other parameters")

    p = command(sub, "make-shards", _cmd_make_shards,
            "write an ImageFolder tree (train/, val/) as WebDataset tar shards",
            "Write FOLDER/<split>/<class>/<image> as OUT/<split>-NNNNNN.tar shards (class "
            "index, the original image bytes, its path) and OUT/index.json (classes, counts). "
            "pvt train / pvt eval --data OUT read them.")
    p.add_argument("folder", metavar="FOLDER", help="an ImageFolder tree with train/ and val/")
    p.add_argument("out", metavar="OUT", help="output folder (must not hold shards already)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="images per shard (default 1000: about 110 MB of ImageNet JPEGs)")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="shuffle the training images across shards (default; --no-shuffle keeps the folder's order)")
    p.add_argument("--seed", type=int, default=0, help="seed of that shuffle")
    p.add_argument("--splits", default="train,val", help="split folders to write, the first giving the classes "
                                                          "(default train,val)")
