"""Training and evaluation transforms (timm's, configured from a TrainConfig or checkpoint metadata)."""

from __future__ import annotations

from typing import Any, Callable

from PIL import Image
from torch import Tensor

from ..base.constants import EVAL_CROP_PCT, EVAL_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["train_transform", "eval_transform"]


def train_transform(cfg: Any) -> Callable[[Image.Image], Tensor]:
    """DeiT's training pipeline through ``timm.data.create_transform``: random-resized crop
    (``cfg.scale``), flip (``cfg.hflip``), RandAugment (``cfg.aa``), ImageNet normalisation and random
    erasing (``cfg.reprob``). PIL image -> ``(3, img_size, img_size)``."""
    from timm.data import create_transform

    aa = None if str(cfg.aa).lower() in ("none", "", "null") else _safe_policy(cfg.aa)
    return create_transform(
        input_size=cfg.img_size,
        is_training=True,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter if aa is None else None,
        auto_augment=aa,
        interpolation=cfg.interpolation,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _safe_policy(aa: str) -> str:
    """RandAugment policies capped at magnitude 9: at 10, timm's increasing posterize keeps 0 bits,
    which Pillow >= 11 rejects (``ValueError: bits must be between 1 and 8``) mid-epoch."""
    if aa.startswith("rand") and "mmax" not in aa:
        return aa + "-mmax9"
    return aa


def eval_transform(
    img_size: int, crop_pct: float = EVAL_CROP_PCT, interpolation: str = EVAL_INTERPOLATION,
    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
) -> Callable[[Image.Image], Tensor]:
    """The paper's evaluation: resize the short side to ``img_size / crop_pct`` (256 for 224),
    centre-crop ``img_size``, normalise. PIL image -> ``(3, img_size, img_size)``."""
    from timm.data import create_transform

    return create_transform(
        input_size=img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
        mean=tuple(mean), std=tuple(std),
    )
