"""PVT as a feature extractor for other people's models: ``create_model(name, features_only=True)``.

The module keeps the plain model's stages (and so its state-dict names, ``stages.{i}.*``) up to the
last selected one, has no head, and returns a list of NCHW maps, as timm's ``features_only`` models do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .model import FeatureInfo, PyramidVisionTransformer, stage_indices

__all__ = ["PVTFeatures"]


class PVTFeatures(PyramidVisionTransformer):
    """The maps of the stages ``out_indices`` selects, from a :class:`PyramidVisionTransformer`.

    ``model(x)``: ``(B, C_in, H, W)`` -> ``[(B, C_i, H_i, W_i)]`` for the selected stages, in stage
    order (v2 maps are ceil-sized: an odd side gives ``ceil(H / 4)`` and so on). ``feature_info`` describes
    those maps only (timm's ``channels()``, ``reduction()``, ``module_name()``, ``get_dicts()``). ``out_indices``: see
    :func:`pvt.models.model.stage_indices` (an int ``n``: the last ``n`` stages; negative indices from the end).

    The stage modules are the given model's own (shared, not copied); stages after the last selected one
    are left out. Everything a :class:`PyramidVisionTransformer` offers for training works here too
    (:meth:`set_grad_checkpointing`, :meth:`set_frozen_stages`, ``norm_eval``, :meth:`forward_intermediates`
    over the kept stages).
    """

    def __init__(self, model: PyramidVisionTransformer, out_indices: int | Sequence[int] | None = None):
        take = stage_indices(len(model.stages), out_indices)
        with torch.device("meta"):  # every attribute the class defines, without building real weights
            super().__init__(model.config.replace(num_classes=0))
        self.stages = nn.ModuleList(list(model.stages)[: take[-1] + 1])
        self.out_indices = tuple(take)
        self.feature_info = FeatureInfo(model.feature_info[i] for i in take)
        self._describe_last_stage()
        self.global_pool = self._check_pool("token" if self.output_fmt == "NLC" else "avg", 0)
        self.pretrained_cfg = dict(model.pretrained_cfg)
        self.min_input_size = model.min_input_size
        self.frozen_stages = min(model.frozen_stages, len(self.stages))
        self.norm_eval = model.norm_eval
        if hasattr(model, "variant_name"):
            self.variant_name = model.variant_name
        self.train(model.training)

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return self.forward_intermediates(x, self.out_indices, intermediates_only=True)  # type: ignore[return-value]
