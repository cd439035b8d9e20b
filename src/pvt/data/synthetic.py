"""Built-in dense-prediction data: shapes on textured backgrounds, written in COCO and ADE20K formats.

Each image holds a few filled shapes (circle, square, triangle; random size, colour and rotation) on a
background of smooth colour noise and stripes. Shapes may touch but overlap little; every label is
exact: instance masks are the visible pixels, boxes are their tight bounds, the semantic map gives
each pixel its shape class. Written once to disk, in the same formats real data comes in::

    root/coco/{train,val}/NNNNN.png
    root/coco/annotations/instances_{train,val}.json   (RLE masks, COCO [x, y, w, h] boxes)
    root/ade/images/{training,validation}/NNNNN.png
    root/ade/annotations/{training,validation}/NNNNN.png   (0 = unlabelled, 1 = background, 2.. = shapes)
    root/ade/classes.json
    root/DONE.json   (the generation parameters; a folder without it is regenerated)

so :mod:`pvt.data.coco` and :mod:`pvt.data.ade` serve it exactly as they serve COCO and ADE20K.
Deterministic: the same ``seed`` gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..base.constants import MAX_BUILTIN_IMAGES, MAX_IMG_SIZE, MAX_OBJECTS
from ..base.io import cache_root

__all__ = ["SHAPE_CLASSES", "make_shapes_dataset", "default_shapes_root", "render_sample"]

SHAPE_CLASSES = ("circle", "square", "triangle")
FORMAT_VERSION = 1


def default_shapes_root() -> Path:
    """Where the built-in data is cached: ``$PVT_CACHE/shapes`` or ``~/.cache/pvt/shapes``."""
    return cache_root("shapes")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float texture in [0, 1]: smooth colour noise plus faint stripes."""
    g = rng.integers(3, 7)
    coarse = rng.random((g, g, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))
    img = img.astype(np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.random() * math.pi
    freq = rng.uniform(0.1, 0.4)
    stripes = 0.5 + 0.5 * np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    img = 0.6 * img + 0.25 * stripes[..., None] * rng.random(3).astype(np.float32)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    n = {"square": 4, "triangle": 3}[kind]
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def _draw_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        d.polygon(_shape_polygon(kind, cx, cy, r, angle), fill=1)
    return np.asarray(m, dtype=bool)


def render_sample(seed: int, size: int = 128, max_objects: int = 4) -> tuple[np.ndarray, list[dict]]:
    """One image ``(size, size, 3) uint8`` and its objects ``[{"label": k, "mask": (size, size) bool}]``
    (labels index :data:`SHAPE_CLASSES`; masks are the visible pixels, none empty)."""
    rng = np.random.default_rng(seed)
    img = _background(rng, size)
    occupied = np.zeros((size, size), bool)
    objects: list[dict] = []
    target = int(rng.integers(1, max_objects + 1))
    for _ in range(target * 8):
        if len(objects) == target:
            break
        label = int(rng.integers(len(SHAPE_CLASSES)))
        kind = SHAPE_CLASSES[label]
        r = rng.uniform(0.08, 0.22) * size
        cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
        mask = _draw_mask(kind, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        area = mask.sum()
        if area < 30 or (mask & occupied).sum() > 0.1 * area:
            continue
        colour = rng.random(3).astype(np.float32)
        shade = 0.85 + 0.15 * rng.random((size, size, 1)).astype(np.float32)
        img = np.where(mask[..., None], np.clip(colour * shade, 0, 1), img)
        for o in objects:  # the new shape hides what it covers
            o["mask"] &= ~mask
        occupied |= mask
        objects.append({"label": label, "mask": mask})
    objects = [o for o in objects if o["mask"].sum() >= 10]
    return (img * 255).round().astype(np.uint8), objects


def _rle(mask: np.ndarray) -> dict:
    from .coco import pycocotools

    enc = pycocotools("mask").encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in enc["size"]], "counts": enc["counts"].decode("ascii")}


def _write_split(root: Path, split: str, ade_split: str, seeds: list[int], size: int, max_objects: int) -> None:
    coco_dir = root / "coco" / split
    ade_img = root / "ade" / "images" / ade_split
    ade_ann = root / "ade" / "annotations" / ade_split
    for d in (coco_dir, ade_img, ade_ann, root / "coco" / "annotations"):
        d.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, seed in enumerate(seeds):
        img, objects = render_sample(seed, size, max_objects)
        name = f"{i:05d}.png"
        Image.fromarray(img).save(coco_dir / name)
        Image.fromarray(img).save(ade_img / name)
        sem = np.ones((size, size), np.uint8)  # 1 = background
        for o in objects:
            sem[o["mask"]] = o["label"] + 2
        Image.fromarray(sem).save(ade_ann / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for o in objects:
            ys, xs = np.nonzero(o["mask"])
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": o["label"] + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(o["mask"].sum()), "iscrowd": 0,
                "segmentation": _rle(o["mask"]),
            })
    cats = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPE_CLASSES)]
    coco = {"info": {"description": "pvt built-in shapes"}, "images": images, "annotations": anns, "categories": cats}
    (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def make_shapes_dataset(
    root: str | Path | None = None,
    *,
    num_train: int = 200,
    num_val: int = 50,
    size: int = 128,
    max_objects: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) the shapes data set under ``root`` and return ``root``.

    An existing complete folder made with the same parameters is reused; one made with others, or
    incomplete, is an error unless ``overwrite``. Written to a temporary sibling and renamed, so a
    failure leaves nothing half-written.
    """
    root = Path(root) if root is not None else default_shapes_root()
    params = {"version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val, "size": size,
              "max_objects": max_objects, "seed": seed, "classes": list(SHAPE_CLASSES)}
    bounds = {"num_train": (1, MAX_BUILTIN_IMAGES), "num_val": (1, MAX_BUILTIN_IMAGES), "size": (32, MAX_IMG_SIZE),
              "max_objects": (1, MAX_OBJECTS)}
    for key, (lo, hi) in bounds.items():
        v = params[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"make_shapes_dataset: {key} {v!r}: expected an integer {lo}..{hi}"
                             + (" (pixels)" if key == "size" else ""))
    done = root / "DONE.json"
    if done.is_file():
        if json.loads(done.read_text()) == params:
            return root
        if not overwrite:
            raise ValueError(
                f"{str(root)!r} holds a shapes data set made with other parameters ({done.read_text()}); "
                "pass overwrite=True (--overwrite) or choose another folder"
            )
    elif root.exists() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"{str(root)!r} exists and is not a shapes data set; choose an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, num_train + num_val)]
        _write_split(tmp, "train", "training", seeds[:num_train], size, max_objects)
        _write_split(tmp, "val", "validation", seeds[num_train:], size, max_objects)
        classes = ["background", *SHAPE_CLASSES]
        (tmp / "ade" / "classes.json").write_text(json.dumps(classes))
        (tmp / "DONE.json").write_text(json.dumps(params))
        if (root / "DONE.json").is_file() and json.loads((root / "DONE.json").read_text()) == params:
            shutil.rmtree(tmp)  # a concurrent writer finished first
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
