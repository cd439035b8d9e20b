"""The GPU inference path: CUDA autocast without its per-call weight casts, with a LayerNorm for narrow rows.

Under ``torch.autocast("cuda")`` eager PyTorch casts every weight and bias to the autocast dtype again
on every forward (one copy kernel each), and every LayerNorm output again before each matrix product
that reads it; and it runs LayerNorm in float32 with a kernel that gives each row its own thread
block, while PVT's rows are only 32-512 channels wide. Here

* weights and biases are cast to the autocast dtype once and kept in the module's ``weight_cache``
  until they change;
* LayerNorms go through :func:`pvt.accel.kernels.layer_norm`, which writes its output straight in the
  dtype its reader needs: the autocast dtype in front of a matrix product, float32 where it feeds the
  residual stream or the pooling of linear SRA (as autocast would keep it).

Same parameters, autocast's numerics. :class:`GpuOps` are the operations :mod:`pvt.layers`' dataflow
calls; they read the plain modules' parameters and skip the layers' ``__call__`` (no hooks, no dropout):
:mod:`pvt.accel` only picks them for inference without hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Block, Ops
from .cache import OpsState
from .kernels import layer_norm

__all__ = ["GpuOps", "float32_norms"]


class GpuOps(Ops):
    """The operations of :class:`~pvt.layers.Ops` under ``torch.autocast("cuda", dtype=dtype)``, for one
    accelerated module. ``float32_norms``: the LayerNorms whose output stays float32 (as autocast's),
    since it feeds the residual stream or the pooling of linear SRA rather than a matrix product."""

    def __init__(self, state: OpsState, dtype: torch.dtype, float32_norms: frozenset[nn.Module]):
        self.state, self.dtype, self.float32_norms = state, dtype, float32_norms

    def _cast(self, layer: nn.Linear | nn.Conv2d) -> tuple[Tensor, Tensor | None]:
        """``layer``'s weight and bias in the autocast dtype, cast once and kept in the weight cache."""
        w, b, dtype = layer.weight, layer.bias, self.dtype
        if w.dtype == dtype and (b is None or b.dtype == dtype):
            return w, b
        return self.state.weight_cache.get(
            (self.state.names[layer], dtype), (w, b),
            lambda: (w.detach().to(dtype), None if b is None else b.detach().to(dtype)),
        )

    def norm(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        return layer_norm(x, norm, torch.float32 if norm in self.float32_norms else self.dtype)

    def linear(self, layer: nn.Linear, x: Tensor, *acts: nn.Module | None) -> Tensor:
        x = F.linear(x, *self._cast(layer))
        for act in acts:
            x = x if act is None else act(x)
        return x

    output = linear  # the residual add stays autocast's (no fused epilogue here)

    def conv(self, conv: nn.Conv2d, x: Tensor, act: nn.Module | None = None) -> Tensor:
        x = F.conv2d(x, *self._cast(conv), conv.stride, conv.padding, conv.dilation, conv.groups)
        return x if act is None else act(x)

    def q_kv(self, attn, x: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(attn.q, x), self.linear(attn.kv, source)


def float32_norms(module: nn.Module) -> frozenset[nn.Module]:
    """The LayerNorms of ``module`` (a patch embedding, block or stage) whose output autocast keeps in
    float32 for its reader: a patch embedding's and a stage's (the residual stream), the first norm of a
    linear-SRA block (its map is pooled before any product) and linear SRA's own (a GELU follows)."""
    if isinstance(module, Block):
        attn = module.attn
        return frozenset(n for n, keep in ((module.norm1, attn.pool is not None), (attn.norm, attn.act is not None)) if keep)
    norm = module.norm
    return frozenset() if norm is None else frozenset({norm})
