"""The GPU path's LayerNorm: many narrow rows per program, output in the dtype its reader needs.

Under CUDA autocast PyTorch runs LayerNorm in float32 with a kernel that gives each row its own thread
block; PVT's rows are 32-512 channels wide, so on large maps LayerNorm takes a large share of a
forward's GPU time (profile: ``docs/speed.md``). :func:`triton_layer_norm` normalises ``BLOCK_M`` rows
per Triton program and writes its output straight in the dtype of the layer that reads it: the
autocast dtype in front of a matrix product, float32 for the residual stream, exactly as autocast
would round it. :func:`layer_norm` picks it for large CUDA inputs and falls back to ``F.layer_norm``
for small ones (where the launch costs more than the kernel saves) and where Triton is missing.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["layer_norm", "triton_layer_norm", "triton_available", "set_triton_enabled"]

_MAX_TRITON_WIDTH = 4096
# Below this many elements a LayerNorm is cheap on the GPU and the forward is bound by launches on the
# host, where a Triton launch costs more than PyTorch's; above it the kernel time, which the Triton
# kernel cuts, dominates (the measurements behind this choice: docs/speed.md, "GPU").
_MIN_TRITON_NUMEL = 1 << 21
_triton_enabled = os.environ.get("PVT_TRITON", "1") != "0"


def set_triton_enabled(enabled: bool) -> bool:
    """Turn the Triton LayerNorm on or off (also ``PVT_TRITON=0``); returns the previous setting."""
    global _triton_enabled
    previous, _triton_enabled = _triton_enabled, bool(enabled)
    return previous


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    """The Triton kernel, compiled on first use (None when Triton is missing)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:  # CPU-only installs
        return None

    @triton.jit
    def _layer_norm_rows(x_ptr, w_ptr, b_ptr, y_ptr, rows, cols, x_stride, y_stride, eps,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        c = tl.arange(0, BLOCK_N)
        col_ok = c < cols
        mask = (r[:, None] < rows) & col_ok[None, :]
        x = tl.load(x_ptr + r[:, None].to(tl.int64) * x_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / cols
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / cols + eps)
        w = tl.load(w_ptr + c, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=col_ok, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + r[:, None].to(tl.int64) * y_stride + c[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)

    return _layer_norm_rows


def triton_available() -> bool:
    """Whether the Triton LayerNorm can run (Triton importable and not switched off)."""
    return _triton_enabled and _kernel() is not None


def triton_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    """LayerNorm over the last dimension of ``x`` (statistics in float32), output in ``out_dtype``.

    ``BLOCK_M`` rows of up to ``BLOCK_N`` (the next power of two of the width) channels per program."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("triton_layer_norm needs the triton package")
    cols = x.shape[-1]
    x2 = x.reshape(-1, cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
    rows = x2.shape[0]
    if rows:
        block_n = max(16, 1 << (cols - 1).bit_length())
        block_m = max(1, min(128, 4096 // block_n))
        kernel[((rows + block_m - 1) // block_m,)](
            x2, weight, bias, y, rows, cols, x2.stride(0), y.stride(0), eps,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4,
        )
    return y.view(x.shape)


def layer_norm(x: Tensor, norm: nn.LayerNorm, out_dtype: torch.dtype) -> Tensor:
    """``norm(x)`` computed in float32 and returned in ``out_dtype`` (the GPU inference path's LayerNorm)."""
    width = x.shape[-1]
    if (
        x.is_cuda
        and norm.weight is not None
        and norm.bias is not None
        and width <= _MAX_TRITON_WIDTH
        and x.numel() >= _MIN_TRITON_NUMEL
        and triton_available()
    ):
        return triton_layer_norm(x, norm.weight, norm.bias, norm.eps, out_dtype)
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(out_dtype)
