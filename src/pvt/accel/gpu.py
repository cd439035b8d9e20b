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

Same parameters, autocast's numerics. The functions read the plain modules' parameters and skip their
``__call__`` (no hooks, no dropout): :mod:`pvt.accel` only runs them for inference without hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Block, PatchEmbed, as_tokens, map_part, on_map
from ..models.model import PVTStage
from .kernels import layer_norm

__all__ = ["patch_embed", "block", "stage"]


def _cast(module: nn.Module, key: str, layer: nn.Linear | nn.Conv2d, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``layer``'s weight and bias in ``dtype``, cast once and kept in ``module.weight_cache`` under ``key``."""
    w, b = layer.weight, layer.bias
    if w.dtype == dtype and (b is None or b.dtype == dtype):
        return w, b
    return module.weight_cache.get(
        (key, dtype), (w, b), lambda: (w.detach().to(dtype), None if b is None else b.detach().to(dtype))
    )


def _linear(module: nn.Module, key: str, layer: nn.Linear, x: Tensor, dtype: torch.dtype) -> Tensor:
    return F.linear(x, *_cast(module, key, layer, dtype))


def _conv(module: nn.Module, key: str, conv: nn.Conv2d, x: Tensor, dtype: torch.dtype) -> Tensor:
    w, b = _cast(module, key, conv, dtype)
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def patch_embed(embed: PatchEmbed, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, int, int]:
    """:class:`~pvt.layers.PatchEmbed` on the GPU path: ``(B, C_in, H, W) -> (B, h*w, C), h, w``; the
    tokens stay float32 (they start the residual stream)."""
    x = _conv(embed, "proj", embed.proj, x, dtype)
    h, w = x.shape[-2:]
    return layer_norm(as_tokens(x), embed.norm, torch.float32), h, w


def _attention(blk: Block, x: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """``attn(x, h, w)`` for normalised ``x (B, N, C)``."""
    attn = blk.attn
    source = x
    if attn.sr is not None:  # the key/value source, as SpatialReductionAttention.reduce
        m = map_part(x, h, w)
        if attn.pool is not None:
            m = attn.pool(m)
        m = as_tokens(_conv(blk, "attn.sr", attn.sr, m, dtype))
        source = layer_norm(m, attn.norm, torch.float32 if attn.act is not None else dtype)
        source = attn.act(source) if attn.act is not None else source
    q, kv = _linear(blk, "attn.q", attn.q, x, dtype), _linear(blk, "attn.kv", attn.kv, source, dtype)
    return _linear(blk, "attn.proj", attn.proj, attn.attend(q, kv), dtype)


def _mlp(blk: Block, x: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """``mlp(x, h, w)`` for normalised ``x (B, N, C)``."""
    mlp = blk.mlp
    x = _linear(blk, "mlp.fc1", mlp.fc1, x, dtype)
    if mlp.relu is not None:
        x = mlp.relu(x)
    if mlp.dwconv is not None:
        dwconv = mlp.dwconv
        x = on_map(x, h, w, lambda m: _conv(blk, "mlp.dwconv", dwconv, m, dtype))
    return _linear(blk, "mlp.fc2", mlp.fc2, mlp.act(x), dtype)


def block(blk: Block, x: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """:class:`~pvt.layers.Block` on the GPU path: ``(B, N, C)`` float32 ``-> (B, N, C)`` float32."""
    # linear SRA pools the normalised map before its first matrix product: keep that in float32
    pooled = blk.attn.pool is not None
    x = x + _attention(blk, layer_norm(x, blk.norm1, torch.float32 if pooled else dtype), h, w, dtype)
    return x + _mlp(blk, layer_norm(x, blk.norm2, dtype), h, w, dtype)


def stage(st: PVTStage, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, int, int]:
    """:class:`~pvt.models.model.PVTStage` on the GPU path: its closing LayerNorm by :func:`layer_norm` (float32
    out, as autocast's); the patch embedding and blocks are accelerated modules of their own."""
    x, h, w = st.forward_blocks(x)
    return (x if st.norm is None else layer_norm(x, st.norm, torch.float32)), h, w
