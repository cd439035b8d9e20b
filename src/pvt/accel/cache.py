"""What an accelerated module's operations keep: the one cache of the accelerated paths (tensors derived
from parameters, kept until those change) and the rest of their state (:class:`OpsState`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn

__all__ = ["WeightCache", "OpsState"]

T = TypeVar("T")


def _fingerprint(sources: Sequence[Tensor | None]) -> tuple:
    """Changes whenever a source tensor is replaced (new storage) or updated in place (version counter;
    inference tensors, e.g. parameters of a model copied under ``torch.inference_mode()``, have none:
    for them only replacement counts)."""
    return tuple(
        None if p is None else (p.data_ptr(), -1 if p.is_inference() else p._version, p.dtype, p.device)
        for p in sources
    )


class WeightCache:
    """Tensors an accelerated module derives from its parameters (cast copies, channels-last or
    stacked weights), each kept under a key until one of the parameters it was made from changes:
    replaced (``.to()``, ``load_state_dict(assign=True)``) or updated in place (optimiser steps,
    ``load_state_dict``). Not parameters and not in the state dict; copies and pickles of a cache are
    empty (the entries are rebuilt on first use)."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple, Any]] = {}

    def get(self, key: Hashable, sources: Sequence[Tensor | None], make: Callable[[], T]) -> T:
        """The entry ``key``, made by ``make()`` from ``sources`` unless they are unchanged since."""
        fingerprint = _fingerprint(sources)
        hit = self._entries.get(key)
        if hit is None or hit[0] != fingerprint:
            hit = (fingerprint, make())
            self._entries[key] = hit
        return hit[1]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __deepcopy__(self, memo: dict) -> WeightCache:
        return WeightCache()

    def __reduce__(self) -> tuple:
        return (WeightCache, ())

    def __repr__(self) -> str:
        return f"WeightCache({', '.join(map(str, self._entries)) or 'empty'})"


class OpsState:
    """What one accelerated module's operations keep: the model's :class:`Acceleration` (the same object,
    not a copy), the tensors derived from its parameters (``weight_cache``), its layers' names (keys of the
    cache and of the int8 ranges), and for int8 the calibrated input range of each product."""

    def __init__(self, module: nn.Module, record: Any):
        self.record = record
        """The model's :class:`~pvt.accel.record.Acceleration`."""
        self.weight_cache = WeightCache()
        self.names: dict[nn.Module, str] = {m: n for n, m in module.named_modules()}
        self.activation_ranges: dict[str, tuple[float, float]] = {}
        """Calibrated ``(min, max)`` of the input of each int8 product (static int8; empty otherwise)."""
        self.activation_qparams: dict[str, tuple[float, int]] = {}
        """The uint8 scale and zero point made from :attr:`activation_ranges`."""
