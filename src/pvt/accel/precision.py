"""One inference precision for every PVT inside a model (:func:`set_precision`): the CPU's precisions
live in the accelerated model's record, int8 through :func:`pvt.accel.quant.quantize`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.model import PyramidVisionTransformer
from .apply import accelerate, accelerate_all
from .capability import resolve_precision
from .quant import quantize

__all__ = ["set_precision"]


def set_precision(
    model: nn.Module, precision: str, *, device: str | torch.device = "cpu", calibration: Any = None
) -> tuple[str, str]:
    """Give every PVT in ``model`` (the model itself, or e.g. a detector's backbone) the inference
    ``precision`` (``float32``, ``bfloat16``, ``int8``, ``auto``: :func:`pvt.accel.capability.resolve_precision`)
    for ``device``; returns ``(precision, reason)``: what was picked and why.

    Every PVT is accelerated on the way (:func:`~pvt.accel.apply.accelerate_all`; settings of an
    accelerated one kept). On the CPU the precision is the accelerated model's; int8 is
    :func:`pvt.accel.quant.quantize` with ``calibration`` (None: dynamic). On a GPU the record stays
    float32: run the model under :func:`inference_autocast`.
    """
    device = torch.device(device)
    picked, reason = resolve_precision(precision, device.type)
    if calibration is not None and picked != "int8":
        raise ValueError(f"calibration images are for int8; the precision is {picked}")
    bodies = [m for m in model.modules() if isinstance(m, PyramidVisionTransformer)]
    if not bodies and picked != "float32":
        raise ValueError(f"precision {picked}: {type(model).__name__} holds no Pyramid Vision Transformer")
    accelerate_all(model)
    if device.type != "cpu":
        return picked, reason
    for body in bodies:
        record = body.acceleration
        if picked == "int8":
            quantize(body, calibration)
        elif record.precision != picked:
            accelerate(body, cpu=record.cpu, gpu=record.gpu, chunk_bytes=record.chunk_bytes, precision=picked)
    return picked, reason
