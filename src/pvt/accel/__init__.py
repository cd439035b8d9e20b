"""Faster execution of the plain model, in one explicit step: :func:`accelerate` (and :func:`plain` back).

:func:`pvt.create_model` accelerates by default; ``PyramidVisionTransformer(cfg)`` is plain.
An accelerated model has the same parameters, state dict and results (float32 rounding; autocast's
numerics on the GPU) and takes, per call:

* on CPU, float32, without autograd: fused oneDNN kernels per block and batches in pieces
  (:mod:`pvt.accel.cpu`);
* on CUDA under ``torch.autocast("cuda")`` without autograd: weights cast once, a Triton LayerNorm
  that writes the dtype its reader needs (:mod:`pvt.accel.gpu`, :mod:`pvt.accel.kernels`);
* the plain forward otherwise: training, CPU autocast, tracing / compiling / exporting, dropout
  active in training mode, and while forward hooks are registered (:mod:`pvt.accel.modules`).

The process-wide CPU allocator setting that the pieces are sized for is in :mod:`pvt.accel.runtime`.
"""

from __future__ import annotations

from torch import nn

from ..layers import Block, PatchEmbed
from ..model import PVTStage, PyramidVisionTransformer
from .cache import WeightCache
from .modules import (
    AcceleratedBlock,
    AcceleratedPatchEmbed,
    AcceleratedPVTStage,
    AcceleratedPyramidVisionTransformer,
    Acceleration,
)

__all__ = ["accelerate", "plain", "Acceleration", "WeightCache"]

_ACCELERATED: dict[type[nn.Module], type[nn.Module]] = {
    PatchEmbed: AcceleratedPatchEmbed,
    Block: AcceleratedBlock,
    PVTStage: AcceleratedPVTStage,
    PyramidVisionTransformer: AcceleratedPyramidVisionTransformer,
}
_PLAIN = {accelerated: plain_class for plain_class, accelerated in _ACCELERATED.items()}


def accelerate(
    model: PyramidVisionTransformer, *, cpu: bool = True, gpu: bool = True, chunk_bytes: int | None = None
) -> PyramidVisionTransformer:
    """Give ``model`` the accelerated paths, in place; returns ``model``.

    The model, its stages, patch embeddings and blocks become instances of the accelerated
    subclasses (:mod:`pvt.accel.modules`); nothing else changes: same parameter objects, buffers,
    state-dict keys and submodules. Modules of other classes (subclasses included) are left alone.

    Args:
        cpu: the CPU path (fused oneDNN kernels, batches in pieces).
        gpu: the GPU path under CUDA autocast (cached casts, Triton LayerNorm).
        chunk_bytes: the pieces' budget in bytes of stage-1 activation; None: 32 MiB while
            :func:`pvt.accel.runtime.tune_cpu_allocator` is in effect, else 16 MiB; 0: whole batches.

    What was done is recorded in ``model.acceleration``; an accelerated model is re-accelerated
    with the new settings.
    """
    if not isinstance(model, PyramidVisionTransformer):
        raise TypeError(f"accelerate() takes a PyramidVisionTransformer, got {type(model).__name__}")
    if chunk_bytes is not None and (isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 0):
        raise ValueError(f"chunk_bytes must be None or an integer >= 0, got {chunk_bytes!r}")
    plain(model)
    record = Acceleration(cpu=bool(cpu), gpu=bool(gpu), chunk_bytes=chunk_bytes)
    for module in model.modules():
        accelerated = _ACCELERATED.get(type(module))
        if accelerated is not None:
            module.__class__ = accelerated
            module.acceleration = record
            module.weight_cache = WeightCache()
    return model


def plain(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate`, in place: every accelerated module gets back its plain class, and
    loses its ``acceleration`` and ``weight_cache``. Returns ``model``; a plain model is left as is."""
    for module in model.modules():
        plain_class = _PLAIN.get(type(module))
        if plain_class is not None:
            module.__class__ = plain_class
            del module.acceleration, module.weight_cache
    return model
