"""The backbone options of every task (``--grad-checkpointing``, ``--frozen-stages``, ``--norm-eval``,
``--freeze-backbone``), applied to the PVT inside whatever model a task builds."""

from __future__ import annotations

from torch import nn

from ..models.model import PyramidVisionTransformer
from .configs import BackboneConfig

__all__ = ["apply_backbone_options"]


def apply_backbone_options(model: nn.Module, cfg: BackboneConfig) -> nn.Module:
    """Set ``cfg``'s backbone options on every :class:`PyramidVisionTransformer` in ``model`` (the model
    itself for classification, ``backbone.body.body`` in a detector or segmenter); returns ``model``.

    ``freeze_backbone`` freezes every stage (the head, neck and dense heads train); it and
    ``frozen_stages`` are two ways of saying one thing, so giving both is a ValueError."""
    if cfg.freeze_backbone and cfg.frozen_stages != -1:
        raise ValueError(f"config values freeze_backbone=True and frozen_stages={cfg.frozen_stages}: both freeze the "
                         "backbone; give one (freeze_backbone freezes every stage)")
    bodies = [m for m in model.modules() if isinstance(m, PyramidVisionTransformer)]
    if not bodies:
        raise ValueError(f"{type(model).__name__} holds no PVT backbone for the backbone options")
    for body in bodies:
        body.set_grad_checkpointing(cfg.grad_checkpointing)
        body.norm_eval = cfg.norm_eval
        body.set_frozen_stages(len(body.stages) if cfg.freeze_backbone else cfg.frozen_stages)
    return model
