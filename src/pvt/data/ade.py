"""ADE20K-format semantic segmentation: images and PNG label maps side by side.

Layout (ADEChallengeData2016 and the built-in shapes)::

    root/images/{training,validation}/NAME.jpg   (or .png, .jpeg)
    root/annotations/{training,validation}/NAME.png   (one class index per pixel)
    root/classes.json   (optional: the class names, after reduce-zero-label)

As mmsegmentation's ADE20K dataset: ``reduce_zero_label`` maps label 0 ("other") to the ignore index
255 and every other label ``k`` to ``k - 1``. Training: random rescale of the ``scale`` (long, short)
by a ratio in ``ratio_range``, a random ``crop_size`` crop in which no class covers more than
``cat_max_ratio`` (10 tries), horizontal flip, padding with the ignore index. Evaluation: the image
rescaled to ``scale`` (aspect kept), the label at its original size.

``dataset[i]`` -> ``(image (3, H, W) float in [0, 1], label (H', W') int64)``.

Errors (naming the file): an image without its label map (or the reverse), sizes that differ, a label
map that is not single-channel, label values beyond the class count (other than 255);
:meth:`ADE20KDataset.check_labels` finds the last two in every label map at once (the segmentation task
runs it on the validation split before the first epoch). A sample whose image or label map cannot be
decoded (truncated, a decompression bomb) is skipped and counted, as classification skips them.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..base.io import read_json
from .coco import UnreadableImage

__all__ = ["ADE20KDataset", "segmentation_collate", "IGNORE_INDEX", "ADE_SPLITS"]

log = logging.getLogger("pvt.data")

IGNORE_INDEX = 255
_LABEL_MODES = ("L", "P", "I", "I;16")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ADE_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def _rescale_size(w: int, h: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale), short <= min(scale)."""
    long_s, short_s = max(scale), min(scale)
    factor = min(long_s / max(w, h), short_s / min(w, h))
    return max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))


class ADE20KDataset(Dataset):
    """Semantic segmentation in the ADE20K layout (see the module docstring).

    Args:
        root: the data set folder.
        split: ``training``/``train`` or ``validation``/``val``.
        train: apply the training pipeline (else the evaluation one).
        num_classes: classes after reduce-zero-label (default: ``classes.json`` or ADE20K's 150).
    """

    def __init__(self, root: str | Path, split: str = "training", *, train: bool = False,
                 crop_size: int = 512, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 reduce_zero_label: bool = True, num_classes: int | None = None, hflip: float = 0.5,
                 cat_max_ratio: float = 0.75):
        self.root = Path(root)
        if split not in ADE_SPLITS:
            raise ValueError(f"split must be one of {', '.join(ADE_SPLITS)}, got {split!r}")
        self.split = ADE_SPLITS[split]
        img_dir = self.root / "images" / self.split
        ann_dir = self.root / "annotations" / self.split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"ADE20K-format folder {str(d)!r} does not exist (expected root/images/"
                                        f"{self.split} and root/annotations/{self.split})")
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in sorted(ann_dir.iterdir()) if p.suffix.lower() == ".png"}
        if not images:
            raise ValueError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        for stem, p in images.items():
            if stem not in labels:
                raise FileNotFoundError(f"{p}: no label map {str(ann_dir / (stem + '.png'))!r}")
        for stem, p in labels.items():
            if stem not in images:
                raise FileNotFoundError(f"{p}: label map without an image in {str(img_dir)!r}")
        self.samples = [(images[s], labels[s]) for s in sorted(images)]
        names_file = self.root / "classes.json"
        names = None
        if names_file.is_file():
            names = read_json(names_file, list, "a JSON list of class names")
            if not (names and all(isinstance(n, str) for n in names)):
                raise ValueError(f"{names_file}: expected a JSON list of class names")
        if num_classes is None:
            num_classes = len(names) if names else 150
        if names is not None and len(names) != num_classes:
            raise ValueError(f"{names_file}: {len(names)} names but num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = names or [f"class_{i}" for i in range(num_classes)]
        self.train, self.crop_size, self.scale = train, int(crop_size), tuple(scale)
        self.ratio_range, self.reduce_zero_label = tuple(ratio_range), reduce_zero_label
        self.hflip, self.cat_max_ratio = hflip, cat_max_ratio

    def __len__(self) -> int:
        return len(self.samples)

    # ------------------------------------------------------------------ loading
    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image and its checked, reduced label map ``(H, W)`` int64 (255 = ignore);
        :class:`~pvt.data.coco.UnreadableImage` when either file cannot be decoded (truncated, a
        decompression bomb)."""
        img_path, ann_path = self.samples[index]
        try:
            with Image.open(img_path) as opened:
                img = opened.convert("RGB")
            with Image.open(ann_path) as opened:
                ann_mode, ann_size = opened.mode, opened.size
                raw = np.asarray(opened) if ann_mode in _LABEL_MODES else None
        except Exception as e:  # noqa: BLE001  (PIL's errors have no common base: bombs, truncated data)
            raise UnreadableImage(f"unreadable file in sample {img_path.name} ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())})") from None
        if raw is None:
            raise ValueError(f"{ann_path}: label map must be single-channel (mode L or P), got mode {ann_mode}")
        if ann_size != img.size:
            raise ValueError(f"{ann_path}: label size {ann_size[0]}x{ann_size[1]} differs from image "
                             f"{img_path.name} {img.size[0]}x{img.size[1]}")
        return img, self._reduce(raw, ann_path)

    def _reduce(self, raw: np.ndarray, ann_path: Path) -> np.ndarray:
        """The label map's values reduced (reduce-zero-label) and checked against the classes."""
        label = raw.astype(np.int64)
        if self.reduce_zero_label:
            label[label == 0] = 256
            label -= 1
            label[label == 255] = IGNORE_INDEX
        bad = np.unique(label[(label != IGNORE_INDEX) & ((label < 0) | (label >= self.num_classes))])
        if bad.size:
            shown = [int(v) + (1 if self.reduce_zero_label else 0) for v in bad[:5]]
            raise ValueError(
                f"{ann_path}: label values {shown} exceed the {self.num_classes} classes "
                f"(accepted: {'1' if self.reduce_zero_label else '0'}.."
                f"{self.num_classes if self.reduce_zero_label else self.num_classes - 1}"
                f"{', 0 = ignore' if self.reduce_zero_label else ''}, and 255 = ignore)"
            )
        return label

    def check_labels(self) -> int:
        """Check every label map's mode and values now (before the first epoch rather than when the sample
        is first met); returns how many could not be decoded (skipped later, when read)."""
        unreadable = 0
        for img_path, ann_path in self.samples:
            try:
                with Image.open(ann_path) as opened:
                    mode = opened.mode
                    raw = np.asarray(opened) if mode in _LABEL_MODES else None
            except Exception:  # noqa: BLE001  (skipped and counted when read)
                unreadable += 1
                continue
            if raw is None:
                raise ValueError(f"{ann_path}: label map must be single-channel (mode L or P), got mode {mode}")
            self._reduce(raw, ann_path)
        return unreadable

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | None:
        """``(image, label)``, or None when a file of the sample cannot be decoded:
        :func:`segmentation_collate` drops and counts it, as classification does."""
        try:
            img, label = self.load(index)
        except UnreadableImage as e:
            log.warning("skipped %s", e)
            return None
        return self._train(img, label) if self.train else self._eval(img, label)

    # ------------------------------------------------------------------ pipelines
    def _eval(self, img: Image.Image, label: np.ndarray) -> tuple[Tensor, Tensor]:
        size = _rescale_size(*img.size, self.scale)
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
        return _to_tensor(img), torch.from_numpy(label)

    def _train(self, img: Image.Image, label: np.ndarray) -> tuple[Tensor, Tensor]:
        r = random.uniform(*self.ratio_range)
        size = _rescale_size(*img.size, [int(s * r) for s in self.scale])
        img = img.resize(size, Image.BILINEAR)
        label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize(size, Image.NEAREST), dtype=np.int64)
        c = self.crop_size
        h, w = label.shape
        for _ in range(10):
            y0, x0 = random.randint(0, max(h - c, 0)), random.randint(0, max(w - c, 0))
            crop = label[y0:y0 + c, x0:x0 + c]
            _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        image = _to_tensor(img)[:, y0:y0 + c, x0:x0 + c]
        target = torch.from_numpy(np.ascontiguousarray(label[y0:y0 + c, x0:x0 + c]))
        if random.random() < self.hflip:
            image, target = image.flip(-1), target.flip(-1)
        ph, pw = c - image.shape[1], c - image.shape[2]
        if ph > 0 or pw > 0:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            target = F.pad(target, (0, pw, 0, ph), value=IGNORE_INDEX)
        return image, target


def _to_tensor(img: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def segmentation_collate(batch: list[tuple[Tensor, Tensor] | None],
                         ) -> tuple[Tensor | list[Tensor], Tensor | list[Tensor], int]:
    """Stack when every sample has the same size (training crops), else lists (evaluation); and the number
    of unreadable samples (None) left out."""
    good = [b for b in batch if b is not None]
    images, labels = [b[0] for b in good], [b[1] for b in good]
    skipped = len(batch) - len(good)
    if good and len({tuple(i.shape) for i in images}) == 1 and len({tuple(t.shape) for t in labels}) == 1:
        return torch.stack(images), torch.stack(labels), skipped
    return images, labels, skipped
