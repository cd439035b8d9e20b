"""The dense-prediction learning-rate schedules, per optimiser step, with timm's scheduler methods
(``step_update``, ``state_dict``, ``load_state_dict``) so the engine drives them like its cosine.

* :class:`MultiStepLR`: mmdetection's 1x/3x: linear warm-up, then x0.1 at the given epochs.
* :class:`PolyLR`: mmsegmentation's ``poly``: ``lr = (peak - min) * (1 - t / T) ** power + min``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["MultiStepLR", "PolyLR", "poly_schedule"]


class _PerStep:
    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] * g.get("lr_scale", 1.0) for g in optimizer.param_groups]  # timm's per-group scale
        self.step_update(0)

    def factor(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step_update(self, num_updates: int, metric: Any = None) -> None:
        """Set every group's lr for update ``num_updates`` (0 = before the first step)."""
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.value(base, num_updates)

    def value(self, base: float, t: int) -> float:
        return base * self.factor(t)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])


class MultiStepLR(_PerStep):
    """Warm-up from ``warmup_ratio * lr`` over ``warmup_steps`` updates, then ``lr * gamma^k`` after
    the k-th of ``milestones`` (in updates)."""

    def __init__(self, optimizer, milestones: Sequence[int], gamma: float = 0.1, warmup_steps: int = 500,
                 warmup_ratio: float = 0.001):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), gamma
        self.warmup_steps, self.warmup_ratio = int(warmup_steps), warmup_ratio
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        f = self.gamma ** sum(t >= m for m in self.milestones)
        if t < self.warmup_steps:
            f *= self.warmup_ratio + (1 - self.warmup_ratio) * t / self.warmup_steps
        return f


class PolyLR(_PerStep):
    """``(lr - min_lr) * (1 - t / total) ** power + min_lr`` over ``total`` updates, after an optional
    linear warm-up from ``warmup_ratio * lr`` over ``warmup_steps`` (mmseg's PVT config has none)."""

    def __init__(self, optimizer, total_steps: int, power: float = 0.9, min_lr: float = 0.0, warmup_steps: int = 0,
                 warmup_ratio: float = 0.001):
        self.total, self.power, self.min_lr = max(1, int(total_steps)), power, min_lr
        self.warmup_steps, self.warmup_ratio = int(warmup_steps), warmup_ratio
        super().__init__(optimizer)

    def value(self, base: float, t: int) -> float:
        lr = (base - self.min_lr) * (1 - min(t, self.total) / self.total) ** self.power + self.min_lr
        if t < self.warmup_steps:
            lr *= self.warmup_ratio + (1 - self.warmup_ratio) * t / self.warmup_steps
        return lr


def poly_schedule(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, power: float = 0.9) -> PolyLR:
    """mmseg's poly over ``cfg.epochs`` to 0, after ``cfg.warmup_epochs`` of linear warm-up from ``cfg.warmup_lr``."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    ratio = min(cfg.warmup_lr / max(cfg.peak_lr(), 1e-12), 1.0)
    return PolyLR(optimizer, cfg.epochs * steps_per_epoch, power=power, min_lr=0.0, warmup_steps=warmup,
                  warmup_ratio=ratio)
