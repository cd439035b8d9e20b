"""Numbers that several layers share and that have exactly one home: the input normalisation every
PVT checkpoint of every ecosystem was trained with."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EVAL_CROP_PCT", "EVAL_INTERPOLATION"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet-1K (inputs in [0, 1])."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet-1K (inputs in [0, 1])."""

EVAL_CROP_PCT: float = 0.875
"""The evaluation centre crop as a fraction of the resized side (224 of 256), as the official PVT
evaluation and ``pvt predict``."""
EVAL_INTERPOLATION: str = "bicubic"
"""The resize interpolation of the official PVT evaluation and ``pvt predict``."""
