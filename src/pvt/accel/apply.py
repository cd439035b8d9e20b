"""Turning a plain model into an accelerated one and back: :func:`accelerate`, :func:`plain`, and the
context a precision runs in (:func:`inference_autocast`). The package docstring (:mod:`pvt.accel`) says
which path runs when."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ..models.model import PVTStage, PyramidVisionTransformer
from .cpu import kernels_fail
from .modules import WITH_OPS, AcceleratedOps, AcceleratedPyramidVisionTransformer
from .record import Acceleration

__all__ = ["accelerate", "accelerate_all", "plain", "inference_autocast", "is_accelerated"]


def accelerate(
    model: PyramidVisionTransformer,
    *,
    cpu: bool = True,
    gpu: bool = True,
    chunk_bytes: int | None = None,
    precision: str = "float32",
    flags: frozenset[str] | None = None,
    compile: bool = False,
) -> PyramidVisionTransformer:
    """Give ``model`` the accelerated paths, in place; returns ``model``.

    The path is decided here, once, and recorded once: ``model.acceleration``. Every stage, patch
    embedding and block gets its own operations (``module.ops``, :class:`~pvt.accel.modules.AcceleratedOps`,
    reading that record) and the model becomes an
    :class:`~pvt.accel.modules.AcceleratedPyramidVisionTransformer` (batches in pieces); the dataflow
    stays the plain modules'. Nothing else changes: same parameter objects, buffers, state-dict keys and
    submodules. Modules of other classes (subclasses included) are left alone. Accelerate for inference:
    training runs the plain operations anyway (:func:`pvt.create_model` gives the plain model).

    Args:
        cpu: the CPU path (fused oneDNN kernels, batches in pieces).
        gpu: the GPU path under CUDA autocast (cached casts, Triton LayerNorm).
        chunk_bytes: the pieces' budget in bytes of stage-1 activation; None: 32 MiB while
            :func:`pvt.accel.runtime.tune_cpu_allocator` is in effect, else 16 MiB; 0: whole batches.
        precision: what the CPU path computes float32 input in: ``float32``; ``bfloat16`` (bf16
            activations and cached bf16 weights: fast only on CPUs with native bf16, see
            :mod:`pvt.accel.capability`); ``auto`` (bfloat16 where the CPU has it, else float32).
            int8 takes calibration or a choice of dynamic ranges: :func:`pvt.accel.quant.quantize`.
        flags: CPU feature flags to decide by (default: this CPU's, :mod:`pvt.accel.capability`).
        compile: also compile the model's calls with ``torch.compile`` (Inductor, freezing on; the
            plain forward is compiled, the first call of each input shape compiles, and the cached code
            makes a second start fast: :mod:`pvt.accel.compile`). Inference only. Where it pays: on the
            AVX2 Zen 3 measured (docs/speed.md, one thread) the compiled model was at least level with the
            fused path at batch 8 (B0 1.11x, B2 level; batch 1 undecided), after a compile of minutes
            (B0: 166-241 s cold, 31-57 s from the cache); where torch.compile cannot run, the accelerated eager model
            runs and ``model.acceleration.note`` says why.

    Where oneDNN's fused bfloat16 kernels do not run (AVX2-only CPUs), bfloat16 runs as the plain
    modules under CPU bf16 autocast; where this PyTorch lacks the fused operators, the CPU path is off
    (the plain float32 model runs). Either way ``model.acceleration.note`` says so in one line.

    An accelerated model is re-accelerated with the new settings (fresh caches; a quantised model goes
    back to float32 unless ``precision="int8"`` is asked for through :func:`~pvt.accel.quant.quantize`).
    """
    if not isinstance(model, PyramidVisionTransformer):
        raise TypeError(f"accelerate() takes a PyramidVisionTransformer, got {type(model).__name__}")
    if chunk_bytes is not None and (isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 0):
        raise ValueError(f"chunk_bytes must be None or an integer >= 0, got {chunk_bytes!r}")
    from .capability import bf16_kernels, resolve_precision

    if precision == "auto":
        precision = resolve_precision("auto", flags=flags)[0]
    if precision not in ("float32", "bfloat16"):
        hint = " (int8: pvt.accel.quant.quantize(model, ...))" if precision == "int8" else ""
        raise ValueError(f"accelerate(precision={precision!r}): choose from float32, bfloat16, auto{hint}")
    cpu_off = kernels_fail(torch.float32) if cpu else None
    no_bf16 = bf16_kernels(flags)
    note = ""
    if cpu_off:
        note = f"CPU path off, the plain float32 model runs: {cpu_off}"
        precision = "float32"
    elif precision == "bfloat16" and no_bf16:
        note = f"bfloat16 runs as the plain modules under CPU autocast: {no_bf16}"
    if compile:
        from .compile import compile_model

        why = compile_model(model)
        if why:
            note = "; ".join(filter(None, [note, f"compile=True: {why}; the accelerated eager model runs"]))
    return _apply(model, Acceleration(cpu=bool(cpu) and not cpu_off, gpu=bool(gpu), chunk_bytes=chunk_bytes,
                                      precision=precision, compute=precision, bf16_fused=no_bf16 is None, note=note))


def _apply(model: PyramidVisionTransformer, record: Acceleration) -> PyramidVisionTransformer:
    """Make ``model`` accelerated with ``record`` (fresh caches, no calibrated ranges)."""
    plain(model)
    if type(model) is PyramidVisionTransformer:
        model.__class__ = AcceleratedPyramidVisionTransformer
    model.acceleration = record
    for module in model.modules():
        if type(module) in WITH_OPS:
            # the stage computes only its closing LayerNorm itself: the GPU path's LayerNorm
            module.ops = AcceleratedOps(module, record, cpu_path=type(module) is not PVTStage)
    return model


def accelerate_all(model: nn.Module, **settings) -> nn.Module:
    """:func:`accelerate` (with ``settings``) every Pyramid Vision Transformer inside ``model`` (the model
    itself, or e.g. a dense model's backbone) that is not accelerated yet; returns ``model``. What the
    inference commands and :func:`pvt.api.load_predictor` apply to the plain model they load."""
    for body in [m for m in model.modules() if isinstance(m, PyramidVisionTransformer)]:
        if not is_accelerated(body):
            accelerate(body, **settings)
    return model


def set_record(model: PyramidVisionTransformer, record: Acceleration) -> None:
    """Replace ``model``'s record (the one every module's operations read); caches and ranges kept."""
    model.acceleration = record
    for module in model.modules():
        if isinstance(module.__dict__.get("ops"), AcceleratedOps):
            module.ops.record = record


def is_accelerated(model: nn.Module) -> bool:
    """Whether :func:`accelerate` was applied to ``model`` (and not undone by :func:`plain`)."""
    return isinstance(model.__dict__.get("acceleration"), Acceleration)


def plain(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate`, in place: the model gets back its plain class and every module its plain
    operations; the record, caches and int8 ranges go. Returns ``model``; a plain model is left as is."""
    if type(model) is AcceleratedPyramidVisionTransformer:
        model.__class__ = PyramidVisionTransformer
    model.__dict__.pop("acceleration", None)
    for module in model.modules():
        if isinstance(module.__dict__.get("ops"), AcceleratedOps):
            del module.ops
    return model


def inference_autocast(device: str | torch.device, precision: str):
    """The context a model of ``precision`` runs in on ``device``: CUDA autocast for bfloat16 on a
    GPU (the CPU's precisions live in the model: :func:`set_precision`), else nothing."""
    device = torch.device(device)
    if device.type == "cuda" and precision == "bfloat16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
