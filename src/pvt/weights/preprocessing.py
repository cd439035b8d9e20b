"""The input a checkpoint's model expects, as ``pvt predict`` prepares it: side, normalisation, evaluation
crop and resize interpolation. Read from a ``pvt train`` file's metadata (checked by
:func:`pvt.weights.checkpoint.check_metadata`), written into every config that records it: the model's own
timm ``pretrained_cfg`` when it is built from the file, the exports' HF preprocessor and timm config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..base.constants import EVAL_CROP_PCT, EVAL_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD
from ..models.config import PVTConfig

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation input: ``img_size`` (the crop), ``mean`` / ``std``, ``crop_pct`` (the crop's share of
    the resized shorter side) and ``interpolation``."""

    img_size: int = PVTConfig.img_size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = EVAL_CROP_PCT
    interpolation: str = EVAL_INTERPOLATION

    @classmethod
    def of(cls, config: PVTConfig, extra: dict[str, Any] | None = None) -> "Preprocessing":
        """What a checkpoint's metadata records (``pvt train`` writes ``img_size``, ``crop_pct``,
        ``interpolation``, ``mean``, ``std``), else ImageNet's at the config's ``img_size``."""
        extra = extra or {}
        return cls(
            img_size=int(extra.get("img_size", config.img_size)),
            mean=tuple(float(v) for v in extra.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in extra.get("std", IMAGENET_STD)),
            crop_pct=float(extra.get("crop_pct", EVAL_CROP_PCT)),
            interpolation=str(extra.get("interpolation", EVAL_INTERPOLATION)),
        )

    @property
    def resize_size(self) -> int:
        """The side the shorter image side is resized to before the centre crop: ``img_size / crop_pct``
        rounded down, as timm's evaluation transform (and so ``pvt predict``) computes it (256 for 224)."""
        return math.floor(self.img_size / self.crop_pct)

    def timm_fields(self, in_chans: int = 3) -> dict[str, Any]:
        """The fields of timm's ``pretrained_cfg`` that ``timm.data.resolve_data_config`` reads (input size,
        interpolation, centre crop, mean and std), JSON-ready: what timm's evaluation transform, and so
        ``pvt predict``'s, is built from."""
        return {"input_size": [in_chans, self.img_size, self.img_size], "interpolation": self.interpolation,
                "crop_pct": self.crop_pct, "crop_mode": "center", "mean": list(self.mean), "std": list(self.std)}

    def apply_to(self, model: Any) -> Any:
        """Set these fields in ``model.pretrained_cfg`` (timm's tuples), so that
        ``timm.data.resolve_data_config(model=model)`` gives this transform; returns ``model``."""
        fields = self.timm_fields(model.config.in_chans)
        model.pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        return model
