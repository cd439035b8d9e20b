"""Faster inference of the plain model, in one explicit step: :func:`accelerate` (and :func:`plain` back).

:func:`pvt.create_model` gives the plain model (the one to train); the inference commands (``pvt eval``,
``predict``, ``benchmark``, ``app``) and :func:`pvt.api.load_predictor` accelerate it. ``accelerate()``
decides the paths once and records them once (``model.acceleration``, :class:`Acceleration`); every
patch embedding, block and stage then runs its one plain dataflow (:mod:`pvt.layers`) on operations that
pick per call (:mod:`pvt.accel.modules`). Same parameters, state dict and results (float32 rounding;
autocast's numerics on the GPU):

* on CPU, float32, without autograd, in eval mode: fused oneDNN operations and batches in pieces
  (:mod:`pvt.accel.cpu`), in float32, or in bfloat16 / int8 where the record's ``precision`` says so
  (``accelerate(model, precision=...)``, :func:`pvt.accel.quant.quantize`) or under CPU bf16 autocast;
* on CUDA under ``torch.autocast("cuda")`` without autograd: weights cast once, a Triton LayerNorm
  that writes the dtype its reader needs (:mod:`pvt.accel.gpu`, :mod:`pvt.accel.kernels`);
* the plain operations otherwise: training mode, autograd, CPU float16 autocast, tracing / compiling /
  exporting, and while forward hooks are registered (:mod:`pvt.accel.modules`).

The process-wide CPU allocator setting that the pieces are sized for is in :mod:`pvt.accel.runtime`.
"""

from .apply import accelerate, inference_autocast, is_accelerated, plain
from .cache import WeightCache
from .precision import set_precision
from .quant import quantize
from .record import Acceleration

__all__ = ["accelerate", "plain", "is_accelerated", "quantize", "set_precision", "inference_autocast",
           "Acceleration", "WeightCache"]
