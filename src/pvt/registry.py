"""Names to models: ``list_models`` and ``create_model``."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from .model import PyramidVisionTransformer
from .variants import VARIANTS, get_variant

__all__ = ["list_models", "create_model"]


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style ``pattern`` (``"pvt_v2_*"``), in table order."""
    return [n for n in VARIANTS if fnmatch.fnmatch(n, pattern)]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
    in_chans: int = 3,
    drop_path_rate: float | None = None,
    accelerate: bool = True,
    **config_overrides: Any,
) -> PyramidVisionTransformer:
    """Build a registered variant, optionally with weights.

    Args:
        name: a name from :func:`list_models`, e.g. ``"pvt_v2_b2"``.
        num_classes: classifier outputs (0: no head). Default 1000, or the head of ``pretrained``
            when that checkpoint describes its own. Asking for a size other than the checkpoint's
            drops its head (with a warning) and starts a fresh one.
        pretrained: a local file or folder (official, timm, HF transformers or this library's
            format, detected) or ``"hf-hub:<repo id>"``.
        in_chans: input channels.
        drop_path_rate: stochastic depth; default 0 (the official training rate is in
            ``pvt.variants.VARIANTS[name].drop_path_rate``).
        accelerate: give the model the faster inference paths of :func:`pvt.accel.accelerate` (same
            parameters and results); ``False``: the plain model.
        **config_overrides: any :class:`~pvt.config.PVTConfig` field, e.g. ``linear_sra=True``.
    """
    variant = get_variant(name)
    overrides = dict(config_overrides, in_chans=in_chans)
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if pretrained is not None:
        from .weights import create_pretrained

        model = create_pretrained(variant, pretrained, num_classes=num_classes, overrides=overrides)
    else:
        overrides["num_classes"] = 1000 if num_classes is None else num_classes
        model = PyramidVisionTransformer(variant.config.replace(**overrides))
        model.variant_name = name
    if accelerate:
        from .accel import accelerate as accelerate_model

        accelerate_model(model)
    return model
