"""Faster execution of the plain model, in one explicit step: :func:`accelerate` (and :func:`plain` back).

:func:`pvt.create_model` accelerates by default; ``PyramidVisionTransformer(cfg)`` is plain.
An accelerated model has the same parameters, state dict and results (float32 rounding; autocast's
numerics on the GPU) and takes, per call:

* on CPU, float32, without autograd: fused oneDNN kernels per block and batches in pieces
  (:mod:`pvt.accel.cpu`), in float32, or in bfloat16 / int8 where the model's ``precision`` says so
  (``accelerate(model, precision=...)``, :func:`pvt.accel.quant.quantize`) or under CPU bf16 autocast;
* on CUDA under ``torch.autocast("cuda")`` without autograd: weights cast once, a Triton LayerNorm
  that writes the dtype its reader needs (:mod:`pvt.accel.gpu`, :mod:`pvt.accel.kernels`);
* the plain forward otherwise: training, CPU float16 autocast, tracing / compiling / exporting, dropout
  active in training mode, and while forward hooks are registered (:mod:`pvt.accel.modules`).

The process-wide CPU allocator setting that the pieces are sized for is in :mod:`pvt.accel.runtime`.
"""

from .apply import accelerate, inference_autocast, plain
from .cache import WeightCache
from .modules import Acceleration
from .precision import set_precision
from .quant import quantize

__all__ = ["accelerate", "plain", "quantize", "set_precision", "inference_autocast", "Acceleration", "WeightCache"]
