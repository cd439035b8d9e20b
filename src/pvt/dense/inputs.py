"""Checks of a detector's input images, so that a bad image is named instead of failing deep inside
torchvision's resize (a zero-sized interpolation, a division by zero)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["check_images"]


def check_images(images: Sequence[Tensor], transform: GeneralizedRCNNTransform) -> None:
    """A ValueError naming the first image that is not ``(3, H, W)`` or that ``transform``'s resize
    (shorter side ``min_size``, the smallest of a multi-scale range, longer side at most ``max_size``)
    would shrink to less than one pixel on a side (an empty image, or a 1 x 500 sliver)."""
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise ValueError("images: expected a list of (3, H, W) tensors")
    short = min(transform.min_size)
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i}: expected a (3, H, W) tensor, got {shape}")
        h, w = int(img.shape[1]), int(img.shape[2])
        if min(h, w) < 1:
            raise ValueError(f"image {i} is {h}x{w} (H x W): empty")
        scale = min(short / min(h, w), transform.max_size / max(h, w))
        if math.floor(h * scale) < 1 or math.floor(w * scale) < 1:
            raise ValueError(
                f"image {i} is {h}x{w} (H x W): resized to shorter side {short} with the longer side at most "
                f"{transform.max_size} it would be {math.floor(h * scale)}x{math.floor(w * scale)}; "
                "crop it or raise max_size")
