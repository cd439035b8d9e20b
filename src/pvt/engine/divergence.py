"""What a diverged run is told: the error, and the checks that name its cause (non-finite weights or a
non-finite batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["TrainingDiverged", "non_finite", "finite_batch"]


class TrainingDiverged(FloatingPointError):
    """The loss or the weights became non-finite; nothing of that epoch was saved."""


def non_finite(model: nn.Module, prefix: str = "") -> list[str]:
    """Names of ``model``'s floating-point tensors holding NaN or Inf (one device sync for all)."""
    items = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    if not items:
        return []
    ok = torch.stack([t.isfinite().all() for _, t in items]).cpu().tolist()
    return [prefix + n for (n, _), good in zip(items, ok) if not good]


def finite_batch(batch: Any) -> bool:
    """Whether every floating-point tensor in a (nested) batch is finite."""
    if isinstance(batch, torch.Tensor):
        return not batch.is_floating_point() or bool(batch.isfinite().all())
    if isinstance(batch, Mapping):
        return all(finite_batch(v) for v in batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return all(finite_batch(v) for v in batch)
    return True
