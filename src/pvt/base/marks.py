"""Marks a model builder puts on its modules for the tools above to read.

A dense model's builder (floor of the models) knows which of its modules the paper's FLOP counter
skipped; the counter (:mod:`pvt.tools.flops`, a floor above) reads the mark. The mark lives here so
the builder need not import the counter.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UNCOUNTED", "mark_uncounted"]

UNCOUNTED = "flops_uncounted"
"""Attribute :func:`mark_uncounted` sets on a module: why the paper's counter did not count it."""


def mark_uncounted(module: Any, reason: str) -> Any:
    """Mark ``module`` (and everything under it) as not counted by the paper's FLOP counter, saying
    ``reason`` (e.g. ``"SyncBN: mmcv 1.3 has no rule"``). Returns ``module``."""
    setattr(module, UNCOUNTED, str(reason))
    return module
