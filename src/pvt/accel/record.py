"""The one record of what :func:`pvt.accel.accelerate` decided: :class:`Acceleration`, kept as
``model.acceleration`` and read by every accelerated module's operations."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import capability
from .runtime import MMAP_THRESHOLD, allocator_mode

__all__ = ["Acceleration", "DEFAULT_PIECE_BYTES"]

DEFAULT_PIECE_BYTES = 16 * 2**20
"""The piece budget under glibc's own malloc settings: blocks this size are reused from its heap
(larger ones are fresh pages on every call)."""


@dataclass(frozen=True)
class Acceleration:
    """What :func:`pvt.accel.accelerate` turned on, decided once: the CPU path (fused oneDNN kernels,
    batches in pieces) and its precision, the GPU path (cached casts, Triton LayerNorm), and the
    pieces' budget in bytes of stage-1 activation (``None``: chosen by the allocator in effect at each
    call; 0: whole batches). Every accelerated module's operations read this one record."""

    cpu: bool = True
    gpu: bool = True
    chunk_bytes: int | None = None
    precision: str = "float32"
    """The CPU path's precision for float32 input: float32, bfloat16, or int8 (:mod:`pvt.accel.quant`)."""
    compute: str = "float32"
    """int8: the dtype of everything but the int8 products (bfloat16 on CPUs with native bf16)."""
    int8: str | None = None
    """int8: ``"static"`` (calibrated activation ranges) or ``"dynamic"`` (each call's own ranges);
    ``"observe"`` while :func:`pvt.accel.quant.calibrate` records ranges (the products then run in
    ``compute``)."""
    reduce_range: bool = False
    """int8: activations quantised to 7 bits (CPUs without VNNI, where 8-bit products can saturate)."""
    int8_min_width: int = 0
    """int8: the linear layers with at least this many outputs run int8, the others in ``compute``
    (:data:`pvt.accel.cpu.INT8_MIN_WIDTH`)."""
    bf16_fused: bool = field(default_factory=lambda: capability.bf16_kernels() is None)
    """Whether bfloat16 (the precision, or CPU bf16 autocast) runs oneDNN's fused kernels here; False:
    the plain modules under CPU autocast, and int8 with float32 around it (:func:`~.capability.bf16_kernels`)."""
    note: str = ""
    """One line on what runs differently from what was asked for, and why (empty: as asked)."""

    def cpu_dtype(self, autocast_bf16: bool) -> torch.dtype | None:
        """What a CPU-path call computes in (``autocast_bf16``: it runs under CPU bf16 autocast): float32 or
        bfloat16 around the int8 products too; None: the plain modules run (under CPU bf16 autocast,
        where the fused bf16 kernels do not run here)."""
        bf16 = autocast_bf16 or self.precision == "bfloat16" or (self.precision == "int8" and self.compute == "bfloat16")
        if not bf16:
            return torch.float32
        if self.bf16_fused:
            return torch.bfloat16
        return torch.float32 if self.precision == "int8" else None

    def plain_autocast(self) -> bool:
        """Whether the model runs its plain modules under CPU bf16 autocast for this precision (bfloat16
        where oneDNN's fused bf16 kernels do not run)."""
        return self.precision == "bfloat16" and not self.bf16_fused

    def piece_budget(self) -> int:
        """Bytes of stage-1 hidden activation per piece now: ``chunk_bytes`` when given (0: whole batches),
        else :data:`~pvt.accel.runtime.MMAP_THRESHOLD` (32 MiB) while the tuned allocator is in effect, the
        largest block glibc then keeps in its heap, or :data:`DEFAULT_PIECE_BYTES` (16 MiB) under glibc's
        own settings."""
        if self.chunk_bytes is not None:
            return self.chunk_bytes
        return MMAP_THRESHOLD if allocator_mode() == "tuned" else DEFAULT_PIECE_BYTES

    def __repr__(self) -> str:
        if not self.cpu:
            pieces = "off"
        elif self.chunk_bytes is None:
            pieces = f"auto (now {_mib(self.piece_budget())})"
        else:
            pieces = _mib(self.chunk_bytes) if self.chunk_bytes > 0 else "whole batches"
        precision = ""
        if self.precision == "bfloat16":
            precision = ", precision=bfloat16"
        elif self.precision == "int8":
            width = f", layers >= {self.int8_min_width} wide" if self.int8_min_width else ""
            precision = f", precision=int8 ({self.int8}, {self.compute} around it{width}{', 7-bit' if self.reduce_range else ''})"
        note = f", note={self.note!r}" if self.note else ""
        return f"Acceleration(cpu={self.cpu}, gpu={self.gpu}, cpu_pieces={pieces}{precision}{note})"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"
