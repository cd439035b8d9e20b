"""Names to models: ``list_models`` and ``create_model``."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
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
    accelerate: bool = False,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    grad_checkpointing: bool = False,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    global_pool: str | None = None,
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
            ``pvt.models.variants.VARIANTS[name].drop_path_rate``).
        accelerate: give the model the faster inference paths of :func:`pvt.accel.accelerate` (same
            parameters and results; for inference). Default: the plain model, the one to train.
        features_only: a :class:`~pvt.models.features.PVTFeatures`: no head, ``model(x)`` gives the maps of
            the stages ``out_indices`` selects (default all four; an int ``n``: the last ``n``; negative
            indices count from the end), ``feature_info`` describes them.
        grad_checkpointing: recompute each block in the backward pass (less memory, same gradients;
            :meth:`~pvt.models.model.PyramidVisionTransformer.set_grad_checkpointing`).
        frozen_stages: -1 none; 0 the first patch embedding; ``n`` the first ``n`` stages: no
            gradients, eval mode while training (mmdetection's ``frozen_stages``).
        norm_eval: keep BatchNorm layers in eval mode while training (mmdetection's ``norm_eval``;
            PVT's own norms are LayerNorms, which it leaves alone).
        global_pool: what the head pools with (timm's): ``"avg"``, ``"token"`` (class-token models), or
            ``""`` (none: with ``num_classes=0``, ``model(x)`` is the unpooled ``forward_features``).
        **config_overrides: any :class:`~pvt.models.config.PVTConfig` field, e.g. ``linear_sra=True``.
    """
    variant = get_variant(name)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects the maps of a features_only model; pass features_only=True")
    if features_only:
        if num_classes:
            raise ValueError(f"a features_only model has no head; num_classes={num_classes} asks for one")
        num_classes = 0
    overrides = dict(config_overrides, in_chans=in_chans)
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if pretrained is not None:
        from ..weights import create_pretrained

        model = create_pretrained(variant, pretrained, num_classes=num_classes, overrides=overrides)
    else:
        overrides["num_classes"] = 1000 if num_classes is None else num_classes
        model = PyramidVisionTransformer(variant.config.replace(**overrides))
        model.variant_name = name
    if global_pool is not None:
        model.set_global_pool(global_pool)
    model.set_grad_checkpointing(grad_checkpointing)
    model.norm_eval = bool(norm_eval)
    model.set_frozen_stages(frozen_stages)
    if features_only:
        from .features import PVTFeatures

        model = PVTFeatures(model, out_indices)
    if accelerate:
        from ..accel import accelerate as accelerate_model

        accelerate_model(model)
    return model
