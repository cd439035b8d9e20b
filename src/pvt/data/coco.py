"""COCO-format detection and instance segmentation: one JSON annotation file and an image folder.

``CocoDataset(image_dir, ann_file, masks=...)[i]`` -> ``(image, target)`` with ``image`` a
``(3, H, W)`` float tensor in [0, 1] and ``target`` a dict: ``boxes`` ``(N, 4)`` float (x1, y1, x2, y2,
pixels), ``labels`` ``(N,)`` int64 contiguous class indices ``0 .. K-1`` (categories sorted by id),
``masks`` ``(N, H, W)`` uint8 when ``masks=True``, ``image_id`` int.

The file is checked when the dataset is made. Errors (ValueError / FileNotFoundError naming the file
and the record): invalid JSON, missing keys, an image, category or annotation id that is not an
integer or appears twice, an ``iscrowd`` other than 0 / 1, a non-finite ``area``, a
``file_name`` that leaves the image folder (absolute, or with ``..``), an annotation whose image or category
does not exist, a ``bbox`` that is not four finite numbers (JSON allows NaN and Infinity), a polygon with a
non-finite coordinate or one far outside the image, an RLE whose size is not [height, width] of its
image or whose counts do not add up, a missing image file.
An image that cannot be decoded (truncated, a decompression bomb) is skipped and counted
(``None`` from ``dataset[i]``, dropped by :func:`detection_collate`), as classification skips them.
Counted skips, as mmdetection does them (``dataset.skipped``): crowd regions and boxes that are empty
or entirely outside the image are left out of training (they stay in the ground truth for COCOeval);
boxes partly outside are clipped; training skips images with no boxes left.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..base.io import read_json

__all__ = ["CocoDataset", "COCO_EXTRA", "load_coco_json", "check_segmentation", "decode_mask", "detection_collate",
           "hflip_detection", "pycocotools"]

log = logging.getLogger("pvt.data")

COCO_EXTRA = "pip install 'pyramid-vision-transformer[coco]'"


def pycocotools(module: str = "mask"):
    """``pycocotools.<module>`` (``mask``, ``coco``, ``cocoeval``): COCO annotations and their evaluation are
    the ``coco`` extra, so where pycocotools is not installed this is a one-line ValueError naming it."""
    try:
        return importlib.import_module(f"pycocotools.{module}")
    except ModuleNotFoundError as e:
        if e.name not in ("pycocotools", f"pycocotools.{module}"):
            raise
    raise ValueError(f"COCO annotations and their evaluation need pycocotools, which is not installed: {COCO_EXTRA}")


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read and structurally check a COCO annotation file."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {str(ann_file)!r} does not exist")
    data = read_json(ann_file, dict, "a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{ann_file}: missing or non-list key {key!r} (COCO needs images, annotations, categories)")
    for i, img in enumerate(data["images"]):
        for key in ("id", "file_name", "width", "height"):
            if not isinstance(img, dict) or key not in img:
                raise ValueError(f"{ann_file}: images[{i}] lacks {key!r}")
    _check_ids(ann_file, data["images"], "images", "image")
    for i, img in enumerate(data["images"]):
        name = img["file_name"]
        if not isinstance(name, str) or not _inside(name):
            raise ValueError(f"{ann_file}: images[{i}] (id {img['id']}) has file_name {name!r}: expected a path "
                             "inside the image folder (relative, without '..')")
        for key in ("width", "height"):
            if not _is_int(img[key]) or img[key] < 1:
                raise ValueError(f"{ann_file}: images[{i}] (id {img['id']}) has {key} {img[key]!r}: expected a "
                                 "positive integer")
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{ann_file}: categories[{i}] needs 'id' and 'name'")
    if not data["categories"]:
        raise ValueError(f"{ann_file}: no categories")
    _check_ids(ann_file, data["categories"], "categories", "category")
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise ValueError(f"{ann_file}: annotations[{k}] is not an object")
        for key in ("image_id", "category_id"):
            if key in a and not _is_int(a[key]):
                raise ValueError(f"{ann_file}: annotations[{k}] has {key} {a[key]!r}; COCO {key}s are integers")
    _check_ids(ann_file, data["annotations"], "annotations", "annotation")
    for k, a in enumerate(data["annotations"]):
        if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd"), float):
            raise ValueError(f"{ann_file}: annotations[{k}] has iscrowd {a['iscrowd']!r}; expected 0 or 1")
        if "area" in a and not (isinstance(a["area"], (int, float)) and not isinstance(a["area"], bool)
                                and math.isfinite(a["area"]) and a["area"] >= 0):
            raise ValueError(f"{ann_file}: annotations[{k}] has area {a['area']!r}; expected a finite number >= 0")
    return data


def _check_ids(ann_file: Path, records: list[dict], section: str, what: str) -> None:
    """Every ``id`` of ``records`` (the ``section`` list) an integer, and unique (annotations may lack one)."""
    first: dict[int, int] = {}
    for i, r in enumerate(records):
        if "id" not in r:
            continue
        if not _is_int(r["id"]):
            raise ValueError(f"{ann_file}: {section}[{i}] has id {r['id']!r}; COCO {what} ids are integers")
        if r["id"] in first:
            raise ValueError(f"{ann_file}: {section}[{i}] has id {r['id']}, as {section}[{first[r['id']]}] does: "
                             f"{what} ids must be unique")
        first[r["id"]] = i


class UnreadableImage(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, a decompression bomb): skipped and counted
    in training and evaluation."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _inside(name: str) -> bool:
    """Whether ``name`` is a relative path that stays inside the folder it is relative to."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return (bool(parts) and not PurePosixPath(name).is_absolute() and not PureWindowsPath(name).drive
            and ".." not in parts)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_segmentation(segm: Any, height: int, width: int, where: str) -> None:
    """Check a COCO ``segmentation`` before pycocotools sees it (its C code trusts its input: a polygon
    coordinate of 1e10 kills the process): polygons are lists of >= 3 finite (x, y) pairs within one image
    size of the ``width`` x ``height`` image; an RLE has ``size`` [height, width] and ``counts``, a string
    (compressed) or integers >= 0 adding up to height * width. A one-line ValueError naming ``where``."""
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list)]
        if not polys or len(polys) != len(segm) or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError(f"{where}: polygon segmentation needs lists of >= 3 (x, y) pairs")
        for poly in polys:
            for j, v in enumerate(poly):
                if not _is_number(v):
                    raise ValueError(f"{where}: a segmentation polygon holds a non-finite or non-numeric "
                                     f"coordinate ({v!r})")
                side = height if j % 2 else width
                if not -side <= v <= 2 * side:
                    raise ValueError(f"{where}: polygon coordinate {v!r} lies far outside the {width}x{height} "
                                     f"image (accepted: {-side}..{2 * side}, within one image size of it)")
        return
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size, counts = segm["size"], segm["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(map(_is_int, size))):
            raise ValueError(f"{where}: RLE size {size!r}; expected [height, width], two integers")
        if size != [height, width]:
            raise ValueError(f"{where}: mask size {size} differs from its image size [{height}, {width}] (h, w)")
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(f"{where}: RLE counts must be integers >= 0 adding up to height * width "
                                 f"({height * width})")
        elif not isinstance(counts, str) or not counts.isascii():
            raise ValueError(f"{where}: RLE counts {type(counts).__name__}; expected a compressed string or a list "
                             "of integers")
        return
    raise ValueError(f"{where}: segmentation must be polygons or an RLE dict with 'size' and 'counts'")


def decode_mask(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE or uncompressed RLE) -> ``(height, width)`` uint8 mask,
    checked first by :func:`check_segmentation`."""
    mask_utils = pycocotools("mask")
    check_segmentation(segm, height, width, where)
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, height, width)
        return mask_utils.decode(mask_utils.merge(rles))
    rle = mask_utils.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
    if isinstance(rle.get("counts"), str):
        rle = dict(rle, counts=rle["counts"].encode("ascii"))
    try:
        return mask_utils.decode(rle)
    except ValueError as e:  # a compressed string that does not decode to height * width pixels
        raise ValueError(f"{where}: RLE counts do not decode to a {height}x{width} mask ({e})") from None


def hflip_detection(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Flip an image and its boxes/masks left-right."""
    w = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    b = target["boxes"].clone()
    b[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    target["boxes"] = b
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


class CocoDataset(Dataset):
    """A COCO-format data set for torchvision detectors (see the module docstring).

    Args:
        image_dir: folder the ``file_name`` entries are relative to.
        ann_file: the JSON annotation file.
        masks: decode instance masks (Mask R-CNN).
        train: training mode: drop images without usable boxes, random horizontal flip.
        hflip: flip probability in training.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, *, masks: bool = False, train: bool = False,
                 hflip: float = 0.5, transform: Callable | None = None):
        pycocotools()  # needed for masks and COCOeval: said now, not after the first epoch
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {str(self.image_dir)!r} does not exist")
        data = load_coco_json(self.ann_file)
        self.masks, self.train, self.hflip, self.transform = masks, train, hflip, transform
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c["name"]) for c in cats]
        self.cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.images = {int(im["id"]): im for im in data["images"]}
        self.skipped: Counter[str] = Counter()
        per_image: dict[int, list[dict]] = {i: [] for i in self.images}
        for k, a in enumerate(data["annotations"]):
            where = f"{self.ann_file}: annotations[{k}] (id {a.get('id')!r})" if isinstance(a, dict) else ""
            if not isinstance(a, dict):
                raise ValueError(f"{self.ann_file}: annotations[{k}] is not an object")
            for key in ("image_id", "category_id", "bbox"):
                if key not in a:
                    raise ValueError(f"{where}: lacks {key!r}")
            if a["image_id"] not in self.images:
                raise ValueError(f"{where}: image_id {a['image_id']!r} is not in 'images'")
            if a["category_id"] not in self.cat_to_label:
                raise ValueError(
                    f"{where}: category_id {a['category_id']!r} is not in 'categories' (ids {self.cat_ids})"
                )
            bbox = a["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise ValueError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
            if not all(math.isfinite(v) for v in bbox):
                raise ValueError(f"{where}: bbox {bbox!r} holds a non-finite number; expected four finite numbers")
            if masks and "segmentation" not in a and not a.get("iscrowd"):
                raise ValueError(f"{where}: lacks 'segmentation' (needed for instance masks)")
            if "segmentation" in a:
                im = self.images[a["image_id"]]
                check_segmentation(a["segmentation"], im["height"], im["width"], f"{where} (image {im['id']})")
            per_image[a["image_id"]].append(dict(a, _where=where))
        self.annotations = per_image
        missing = [im for im in self.images.values() if not (self.image_dir / im["file_name"]).is_file()]
        if missing:
            im = missing[0]
            raise FileNotFoundError(
                f"{self.ann_file}: image id {im['id']} file {str(self.image_dir / im['file_name'])!r} does not exist"
                + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
            )
        self.ids = sorted(self.images)
        self.count_skips()
        if train:
            keep = [i for i in self.ids if self._usable(i)]
            self.skipped["images_without_boxes"] = len(self.ids) - len(keep)
            self.ids = keep
            if not self.ids:
                raise ValueError(f"{self.ann_file}: no image has a usable box")
        for key, n in self.skipped.items():
            if n:
                log.info("%s: skipped %d %s", self.ann_file, n, key.replace("_", " "))
        self._coco = None

    # ------------------------------------------------------------------ records
    def _usable(self, image_id: int) -> bool:
        im = self.images[image_id]
        return any(self._clip(a, im["width"], im["height"], count=False) is not None for a in self.annotations[image_id])

    def _clip(self, a: dict, w: int, h: int, count: bool = True) -> list[float] | None:
        """The annotation's box as clipped (x1, y1, x2, y2), or None for a counted skip."""
        if a.get("iscrowd"):
            if count:
                self.skipped["crowd_regions"] += 1
            return None
        x, y, bw, bh = (float(v) for v in a["bbox"])
        if bw < 1 or bh < 1:
            if count:
                self.skipped["empty_boxes"] += 1
            return None
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
        if x2 - x1 < 1 or y2 - y1 < 1:
            if count:
                self.skipped["boxes_outside_image"] += 1
            return None
        if count and (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
            self.skipped["boxes_clipped"] += 1
        return [x1, y1, x2, y2]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def coco(self):
        """The ground truth as a pycocotools ``COCO`` object (for COCOeval)."""
        if self._coco is None:
            COCO = pycocotools("coco").COCO  # noqa: N806 - the class

            data = load_coco_json(self.ann_file)
            free = max((a["id"] for a in data["annotations"] if "id" in a), default=0) + 1
            for k, a in enumerate(data["annotations"]):
                a.setdefault("id", free + k)  # unique, beside the ids the file gives
                a.setdefault("iscrowd", 0)
                if "area" not in a:
                    a["area"] = float(a["bbox"][2] * a["bbox"][3])
            coco = COCO()
            coco.dataset = data
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def load_image(self, image_id: int) -> Image.Image:
        """The image of ``image_id`` as RGB; :class:`UnreadableImage` when it cannot be decoded, a
        ValueError when its size differs from the annotation file's."""
        im = self.images[image_id]
        path = self.image_dir / im["file_name"]
        try:
            with Image.open(path) as opened:
                img = opened.convert("RGB")
        except Exception as e:  # noqa: BLE001  (PIL's errors have no common base: bombs, truncated data)
            raise UnreadableImage(f"{path}: unreadable image ({type(e).__name__}: {' '.join(str(e).split())})") \
                from None
        if img.size != (im["width"], im["height"]):
            raise ValueError(
                f"{self.ann_file}: image id {image_id} says {im['width']}x{im['height']} but "
                f"{path} is {img.size[0]}x{img.size[1]}"
            )
        return img

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        """``(image, target)``, or None when the image cannot be decoded (truncated, a decompression bomb):
        :func:`detection_collate` drops and counts it, as classification does."""
        image_id = self.ids[index]
        try:
            img = self.load_image(image_id)
        except UnreadableImage as e:
            log.warning("skipped %s", e)
            return None
        w, h = img.size
        boxes, labels, masks = [], [], []
        for a in self.annotations[image_id]:
            box = self._clip(a, w, h, count=False)
            if box is None:
                continue
            boxes.append(box)
            labels.append(self.cat_to_label[a["category_id"]])
            if self.masks:
                masks.append(decode_mask(a["segmentation"], h, w, a["_where"]))
        image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        target: dict[str, Tensor] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }
        if self.masks:
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8)
        if self.train and self.hflip > 0 and torch.rand(()) < self.hflip:
            image, target = hflip_detection(image, target)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def count_skips(self) -> Counter:
        """Walk every record once and count the skips (crowd, empty, outside, clipped boxes)."""
        self.skipped = Counter({k: v for k, v in self.skipped.items() if k == "images_without_boxes"})
        for image_id, anns in self.annotations.items():
            im = self.images[image_id]
            for a in anns:
                self._clip(a, im["width"], im["height"], count=True)
        return self.skipped


def detection_collate(batch: list[tuple[Tensor, dict] | None]) -> tuple[list[Tensor], list[dict], int]:
    """Lists of images and targets (torchvision detectors take lists of any sizes), and the number of
    unreadable images (None) left out."""
    good = [b for b in batch if b is not None]
    return [b[0] for b in good], [b[1] for b in good], len(batch) - len(good)
