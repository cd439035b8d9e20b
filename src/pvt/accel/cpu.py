"""The CPU inference path: fused oneDNN kernels per block, and batches run in pieces.

Kernels. Where the plain modules run one kernel per operation, these functions run
* ``fc1`` + bias (+ ReLU / exact GELU) and ``q`` / ``kv`` + bias in one oneDNN pass each (no
  bias-broadcast copy),
* the 3x3 depth-wise convolution + exact GELU of the convolutional FFN in one pass,
* the attention and MLP output projections + the residual add in one pass,
* one GEMM for ``q``, ``k`` and ``v`` where keys come from the full map (no spatial reduction),
* convolutions on channels-last token views with channels-last weights, made once and cached.
Same parameters, same results up to float32 rounding. They read the plain modules' parameters and
skip the modules' ``__call__`` (so no hooks, no dropout: :mod:`pvt.accel` only runs them for inference
without hooks).

Pieces. The largest tensor of a forward is the stage-1 MLP hidden activation
``(B, H/4 * W/4, C_1 * mlp_ratio_1)``. Run as a whole, a large batch allocates it as fresh memory
pages on every call; :func:`piece_size` splits a batch into as few even pieces as keep it under a
budget (:func:`piece_budget`) that the C allocator serves from its heap. No layer mixes samples, so
per-sample results are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Block, Mlp, PatchEmbed, SpatialReductionAttention, as_tokens, map_part, on_map
from ..model import PyramidVisionTransformer
from .runtime import MMAP_THRESHOLD, allocator_mode

__all__ = ["FUSED_OPS", "DEFAULT_PIECE_BYTES", "piece_budget", "piece_size", "patch_embed", "block"]

DEFAULT_PIECE_BYTES = 16 * 2**20
"""The piece budget under glibc's own malloc settings: blocks this size are reused from its heap
(larger ones are fresh pages on every call)."""


def _has_fused_ops() -> bool:
    try:
        ops = torch.ops.mkldnn
        return torch.backends.mkldnn.is_available() and all(
            hasattr(ops, n) for n in ("_linear_pointwise", "_convolution_pointwise")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


FUSED_OPS = _has_fused_ops()
"""Whether this PyTorch build has the fused oneDNN operators (the CPU path needs them)."""


# ----------------------------------------------------------------------------------- pieces
def piece_budget(chunk_bytes: int | None = None) -> int:
    """Bytes of stage-1 hidden activation per piece: ``chunk_bytes`` when given (0: whole batches),
    else :data:`~pvt.accel.runtime.MMAP_THRESHOLD` (32 MiB) while the tuned allocator is in effect, the
    largest block glibc then keeps in its heap, or :data:`DEFAULT_PIECE_BYTES` (16 MiB) under glibc's
    own settings."""
    if chunk_bytes is not None:
        return chunk_bytes
    return MMAP_THRESHOLD if allocator_mode() == "tuned" else DEFAULT_PIECE_BYTES


def piece_size(model: PyramidVisionTransformer, batch: int, height: int, width: int, budget: int) -> int | None:
    """Images per piece when a float32 batch of ``(batch, C, height, width)`` is split into as few even
    pieces as keep each piece's stage-1 hidden activation under ``budget`` bytes; None: no split (one
    image, a budget <= 0, or the batch fits). The one rule for the CPU inference pieces and the
    trainer's automatic micro-batches."""
    if budget <= 0 or batch < 2:
        return None
    cfg = model.config
    h, w = model.stages[0].patch_embed.output_size(height, width)
    total = batch * h * w * int(cfg.embed_dims[0] * cfg.mlp_ratios[0]) * 4
    pieces = min(batch, -(-total // budget))
    return -(-batch // pieces) if pieces > 1 else None


# ---------------------------------------------------------------------------------- kernels
def _linear(x: Tensor, layer: nn.Linear, act: str = "none") -> Tensor:
    """Fused ``act(x @ W.T + b)`` (``act``: none, relu, gelu; exact erf GELU)."""
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, act, [], "none")


def _linear_add(x: Tensor, layer: nn.Linear, residual: Tensor) -> Tensor:
    """Fused ``residual + x @ W.T + b``."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")


def _conv(module: nn.Module, key: str, conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` with its weight in channels-last order, cached in ``module.weight_cache`` under ``key``
    (spares oneDNN a reorder of the weight on every call): channels-last output."""
    w = conv.weight
    weight = module.weight_cache.get(key, (w,), lambda: w.detach().contiguous(memory_format=torch.channels_last))
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_gelu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Fused ``gelu(conv(x))``; channels-last in, channels-last out."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "gelu", [], "none"
    )


def _stacked_qkv(attn: SpatialReductionAttention) -> tuple[Tensor, Tensor | None]:
    """``q`` and ``kv`` stacked into one ``(3C, C)`` weight (and bias)."""
    weight = torch.cat([attn.q.weight, attn.kv.weight]).detach()
    bias = None if attn.q.bias is None else torch.cat([attn.q.bias, attn.kv.bias]).detach()
    return weight, bias


# ----------------------------------------------------------------------------------- layers
def patch_embed(embed: PatchEmbed, x: Tensor) -> tuple[Tensor, int, int]:
    """:class:`~pvt.layers.PatchEmbed` on the CPU path: ``(B, C_in, H, W) -> (B, h*w, C), h, w``."""
    x = _conv(embed, "proj", embed.proj, x)
    h, w = x.shape[-2:]
    return embed.norm(as_tokens(x)), h, w


def _reduce(blk: Block, x: Tensor, h: int, w: int) -> Tensor:
    """The attention's key/value source ``(B, N, C) -> (B, M, C)`` (as ``SpatialReductionAttention.reduce``)."""
    attn = blk.attn
    m = map_part(x, h, w)
    if attn.pool is not None:
        m = attn.pool(m)
    m = attn.norm(as_tokens(_conv(blk, "attn.sr", attn.sr, m)))
    return attn.act(m) if attn.act is not None else m


def _attention_add(blk: Block, x: Tensor, h: int, w: int, residual: Tensor) -> Tensor:
    """``residual + attn(x, h, w)`` for ``x (B, N, C)``."""
    attn = blk.attn
    if attn.sr is None:  # keys from the full map: one GEMM for q, k and v
        weight, bias = blk.weight_cache.get(
            "attn.qkv", (attn.q.weight, attn.kv.weight, attn.q.bias, attn.kv.bias), lambda: _stacked_qkv(attn)
        )
        qkv = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
        c = x.shape[-1]
        q, kv = qkv[..., :c], qkv[..., c:]
    else:
        q, kv = _linear(x, attn.q), _linear(_reduce(blk, x, h, w), attn.kv)
    return _linear_add(attn.attend(q, kv), attn.proj, residual)


def _mlp_add(mlp: Mlp, x: Tensor, h: int, w: int, residual: Tensor) -> Tensor:
    """``residual + mlp(x, h, w)`` for ``x (B, N, C)``."""
    if mlp.dwconv is None:
        x = _linear(x, mlp.fc1, "gelu") if mlp.relu is None else F.gelu(_linear(x, mlp.fc1, "relu"))
    else:
        dwconv = mlp.dwconv
        x = _linear(x, mlp.fc1, "relu" if mlp.relu is not None else "none")
        x = on_map(x, h, w, lambda m: _conv_gelu(m, dwconv), F.gelu)  # the class token gets its GELU alone
    return _linear_add(x.contiguous(), mlp.fc2, residual)


def block(blk: Block, x: Tensor, h: int, w: int) -> Tensor:
    """:class:`~pvt.layers.Block` on the CPU path: ``(B, N, C), h, w -> (B, N, C)``."""
    x = _attention_add(blk, blk.norm1(x), h, w, residual=x)
    return _mlp_add(blk.mlp, blk.norm2(x), h, w, residual=x)
