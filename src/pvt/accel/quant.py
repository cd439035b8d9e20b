"""int8 inference on the CPU: post-training quantisation of every linear layer, one explicit step.

:func:`quantize` records ``precision="int8"`` in ``model.acceleration`` (the parameters stay float32
and untouched: :func:`dequantize` or :func:`pvt.accel.accelerate` goes back); the CPU path
(:mod:`pvt.accel.cpu`) then runs ``q``, ``kv``, ``proj``, ``fc1`` and ``fc2`` of every block as oneDNN
u8 x s8 products with their bias, ReLU / GELU and residual add fused, from int8 weights made once and
cached:

* layers: every linear layer at least ``min_width`` outputs wide (default: where int8 pays);
* weights: symmetric int8 per output channel (``scale = max|w_row| / 127``);
* activations: asymmetric uint8 per tensor. With ``calibration`` images (static) the ranges are the
  min / max each product's input reached over them; without (dynamic) every call measures its own,
  one extra pass over each input, and a sample's result then depends a little on its batch.

Where int8 does not pay (narrow layers beside native bf16 GEMMs: :data:`pvt.accel.cpu.INT8_MIN_WIDTH`)
a linear layer stays in the compute dtype. The convolutions (patch embeddings, spatial reduction, the
depth-wise convolution), LayerNorm and attention stay in the compute dtype: bfloat16 on CPUs with
native bf16 arithmetic (halving their memory traffic), else float32. On CPUs without VNNI activations use 7 bits (:mod:`.capability`).
The classifier head stays float32. Training, autograd and exports take the plain float32 model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..models.model import PyramidVisionTransformer
from . import cpu
from .apply import _apply, accelerate, is_accelerated, set_record
from .capability import bf16_kernels, has_bf16, has_vnni
from .modules import AcceleratedOps
from .record import Acceleration

__all__ = ["quantize", "dequantize", "calibrate", "is_quantized"]


def _record(model: PyramidVisionTransformer) -> Acceleration:
    return model.acceleration if is_accelerated(model) else Acceleration()


def _batches(calibration: Any, batch_size: int) -> Iterable[Tensor]:
    """Image batches from a ``(N, C, H, W)`` tensor, or from an iterable of tensors / ``(images, ...)`` tuples."""
    if isinstance(calibration, Tensor):
        if calibration.ndim != 4:
            raise ValueError(f"calibration images must be (N, C, H, W), got shape {tuple(calibration.shape)}")
        yield from calibration.split(batch_size)
        return
    for item in calibration:
        images = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(images, Tensor):
            raise TypeError(f"calibration batches must be tensors or (images, ...) tuples, got {type(images).__name__}")
        yield images if images.ndim == 4 else images.unsqueeze(0)


def quantize(
    model: PyramidVisionTransformer,
    calibration: Any = None,
    *,
    compute: str = "auto",
    min_width: int | None = None,
    batch_size: int = 16,
    flags: frozenset[str] | None = None,
) -> PyramidVisionTransformer:
    """Switch ``model``'s CPU inference to int8, in place; returns ``model`` (accelerated if it was not).

    Args:
        calibration: images to take static activation ranges from: a float32 ``(N, C, H, W)`` tensor
            prepared as the model's input, or an iterable of such batches (a DataLoader of ``(images,
            targets)``). None: dynamic ranges, measured on every call.
        compute: dtype of the non-int8 work: ``auto`` (bfloat16 where the CPU has native bf16, else
            float32), ``bfloat16`` (float32 where oneDNN's fused bf16 kernels do not run, e.g. on AVX2-only
            CPUs: ``model.acceleration.note`` says so) or ``float32``.
        min_width: run int8 only the linear layers with at least this many outputs, the others in
            ``compute`` (None: where int8 pays beside ``compute``, :data:`pvt.accel.cpu.INT8_MIN_WIDTH`;
            0: every linear layer).
        batch_size: images per calibration forward when ``calibration`` is one tensor.
        flags: CPU feature flags to decide by (default: this CPU's, :func:`~.capability.cpu_flags`).

    ``model.acceleration`` records the result (``precision="int8"``, ``int8="static"|"dynamic"``,
    ``compute``, ``reduce_range``, ``int8_min_width``).
    """
    if not isinstance(model, PyramidVisionTransformer):
        raise TypeError(f"quantize() takes a PyramidVisionTransformer, got {type(model).__name__}")
    if compute not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"quantize(compute={compute!r}): choose from auto, float32, bfloat16")
    cannot = cpu.kernels_fail(torch.float32, int8=True)
    if cannot:
        raise ValueError(f"int8 cannot run here: {cannot}")
    no_bf16 = bf16_kernels(flags) or cpu.kernels_fail(torch.bfloat16, int8=True)  # also under CPU autocast
    if compute == "auto":
        compute = "bfloat16" if has_bf16(flags) and no_bf16 is None else "float32"
    note = ""
    if compute == "bfloat16" and no_bf16:
        compute, note = "float32", f"int8 with float32 around it instead of bfloat16: {no_bf16}"

    base = _record(model)
    if min_width is None:
        min_width = cpu.INT8_MIN_WIDTH[torch.bfloat16 if compute == "bfloat16" else torch.float32]
    if min_width < 0:
        raise ValueError(f"quantize(min_width={min_width}): expected >= 0")
    record = dataclasses.replace(base, cpu=True, precision="int8", compute=compute, reduce_range=not has_vnni(flags),
                                 int8="dynamic" if calibration is None else "observe", int8_min_width=min_width,
                                 bf16_fused=no_bf16 is None, note=note)
    _apply(model, record)
    if calibration is not None:
        calibrate(model, calibration, batch_size=batch_size)
    return model


def calibrate(model: PyramidVisionTransformer, calibration: Any, *, batch_size: int = 16) -> PyramidVisionTransformer:
    """Record the input range of every int8 product of an int8 ``model`` over ``calibration`` images
    (see :func:`quantize`) and switch it to static ranges. Ranges from earlier calibrations are replaced."""
    record = _record(model)
    if record.precision != "int8":
        raise ValueError("calibrate() needs an int8 model: pvt.accel.quant.quantize(model, calibration)")
    states = [m.ops for m in model.modules() if isinstance(m.__dict__.get("ops"), AcceleratedOps)]
    for state in states:
        state.activation_ranges.clear()
        state.activation_qparams.clear()
    set_record(model, dataclasses.replace(record, int8="observe"))
    was_training = model.training
    images = 0
    try:
        model.eval()
        with torch.inference_mode():
            for batch in _batches(calibration, batch_size):
                model(batch.float())
                images += batch.shape[0]
    except BaseException:
        set_record(model, dataclasses.replace(record, int8="dynamic"))
        raise
    finally:
        model.train(was_training)
    if images == 0:
        set_record(model, dataclasses.replace(record, int8="dynamic"))
        raise ValueError("calibration gave no images")
    for state in states:
        state.activation_qparams.update(
            {key: cpu.qparams(lo, hi, record.reduce_range) for key, (lo, hi) in state.activation_ranges.items()}
        )
    set_record(model, dataclasses.replace(record, int8="static"))
    return model


def dequantize(model: PyramidVisionTransformer) -> PyramidVisionTransformer:
    """Back to the float32 CPU path with the same acceleration settings (the parameters never changed)."""

    record = _record(model)
    return accelerate(model, cpu=record.cpu, gpu=record.gpu, chunk_bytes=record.chunk_bytes)


def is_quantized(model: PyramidVisionTransformer) -> bool:
    """Whether ``model``'s CPU path runs int8."""
    return is_accelerated(model) and model.acceleration.precision == "int8"
