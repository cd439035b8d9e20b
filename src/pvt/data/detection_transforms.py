"""Training-time augmentations for detection data: ``transform(image, target) -> (image, target)`` on a
``(3, H, W)`` image and its target (``boxes`` (N, 4) x1, y1, x2, y2 pixels, ``labels`` (N,), optional
``masks`` (N, H, W)), as :class:`pvt.data.coco.CocoDataset` applies them after its flip.

:class:`RandomCropPolicy` is the crop augmentation of the official Sparse R-CNN and Cascade Mask R-CNN
configs of PVT v2 (from DETR): mmdet's ``AutoAugment`` choosing, per image, between

1. the multi-scale resize alone (shorter side 480-800), and
2. a resize to shorter side 400, 500 or 600 (longer at most 1333), an absolute random crop of height and
   width each in 384-600 px (at most the image), then the same multi-scale resize.

The detector's own transform does the final multi-scale resize in both cases, so this transform only
crops: it draws the crop as mmdet draws it on the resized image and cuts the same region out of the
original image (one resize instead of two, the same region up to rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RandomCropPolicy", "crop_detection"]


def _randint(lo: int, hi: int) -> int:
    """A uniform integer in ``[lo, hi]`` (inclusive) from torch's generator (seeded per worker)."""
    return int(torch.randint(lo, hi + 1, ()).item()) if hi > lo else lo


def crop_detection(image: Tensor, target: dict[str, Tensor], x0: int, y0: int, x1: int, y1: int
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """``image[:, y0:y1, x0:x1]`` and its target: boxes shifted and clipped to the crop, and only the boxes
    that keep a positive width and height kept (with their labels and masks), as mmdet's ``RandomCrop``.
    The result may hold no box (mmdet's ``allow_negative_crop=True``)."""
    image = image[:, y0:y1, x0:x1]
    h, w = image.shape[-2:]
    boxes = target["boxes"] - torch.tensor([x0, y0, x0, y0], dtype=target["boxes"].dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = dict(target, boxes=boxes[keep], labels=target["labels"][keep])
    if "masks" in target:
        out["masks"] = target["masks"][keep][:, y0:y1, x0:x1]
    return image, out


class RandomCropPolicy:
    """With probability ``p`` (mmdet's AutoAugment: one of two policies, 0.5), crop as policy 2 of the
    module docstring; otherwise leave the image to the multi-scale resize.

    Args:
        scales: the shorter sides the image is (notionally) resized to before the crop (400, 500, 600).
        crop: the range of the crop's height and width on that resized image (384, 600).
        max_size: the longer side's cap of that resize (1333).
        p: probability of the crop policy.

    The sizes are at the paper's 800 px scale; :meth:`scaled` gives the policy for another scale (e.g.
    64 px images: shorter sides 32-48, crops of 31-48 px).
    """

    def __init__(self, scales: Sequence[float] = (400, 500, 600), crop: tuple[float, float] = (384, 600),
                 max_size: float = 1333, p: float = 0.5):
        if not scales or min(scales) <= 0 or not 0 < crop[0] <= crop[1] or max_size <= 0 or not 0 <= p <= 1:
            raise ValueError(f"RandomCropPolicy(scales={scales!r}, crop={crop!r}, max_size={max_size!r}, p={p!r}): "
                             "expected positive sizes, crop low <= high, p in [0, 1]")
        self.scales, self.crop, self.max_size, self.p = tuple(scales), tuple(crop), max_size, p

    @classmethod
    def scaled(cls, short_side: int, p: float = 0.5) -> "RandomCropPolicy":
        """The official policy for images trained at shorter side ``short_side`` instead of 800."""
        f = short_side / 800
        return cls(tuple(s * f for s in (400, 500, 600)), (384 * f, 600 * f), 1333 * f, p)

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A random crop ``(x0, y0, x1, y1)`` of a ``height x width`` image, drawn on the resized image."""
        short = self.scales[_randint(0, len(self.scales) - 1)]
        f = min(short / min(height, width), self.max_size / max(height, width))
        rh, rw = max(1, round(height * f)), max(1, round(width * f))
        lo, hi = round(self.crop[0]), round(self.crop[1])
        ch = _randint(min(rh, lo), min(rh, hi))
        cw = _randint(min(rw, lo), min(rw, hi))
        ch, cw = min(height, max(1, round(ch / f))), min(width, max(1, round(cw / f)))
        y0, x0 = _randint(0, height - ch), _randint(0, width - cw)
        return x0, y0, x0 + cw, y0 + ch

    def __call__(self, image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if self.p <= 0 or (self.p < 1 and torch.rand(()) >= self.p):
            return image, target
        return crop_detection(image, target, *self.region(*image.shape[-2:]))

    def __repr__(self) -> str:
        return f"RandomCropPolicy(scales={self.scales}, crop={self.crop}, max_size={self.max_size}, p={self.p})"
