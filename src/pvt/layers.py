"""Building blocks of the Pyramid Vision Transformer: one class per concept, plain PyTorch forwards.

Tokens travel as ``(B, N, C)`` sequences in row-major ``(h, w)`` order; a block receives the map's
``(h, w)`` so that it can view the tokens as an image where it needs one (spatial reduction, the
depth-wise convolution of the convolutional FFN). Some token sequences carry extra leading tokens
(the v1 class token): those are left out of every spatial operation.

These classes are the reference: training, autocast, tracing and export run them as written. Each
block's dataflow is written once, here; the operations it is made of (a linear layer with its
activation, a convolution, a LayerNorm, the ``q`` / ``kv`` products) come from an :class:`Ops`: the
plain one calls the modules, and :func:`pvt.accel.accelerate` gives a module faster ones (fused oneDNN
kernels on the CPU, cached casts on CUDA) for the same parameters and state dict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

__all__ = ["Ops", "PLAIN", "PatchEmbed", "SpatialReductionAttention", "Mlp", "Block", "as_map", "as_tokens", "map_part", "on_map"]


def as_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """``(B, h*w, C)`` tokens -> ``(B, C, h, w)`` map, as a channels-last view (no copy)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


def as_tokens(x: Tensor) -> Tensor:
    """``(B, C, h, w)`` map -> ``(B, h*w, C)`` tokens (no copy when ``x`` is channels-last)."""
    return x.flatten(2).transpose(1, 2)


def map_part(tokens: Tensor, h: int, w: int) -> Tensor:
    """The map of ``(B, extra + h*w, C)`` tokens without their extra leading tokens: ``(B, C, h, w)``."""
    n = tokens.shape[1]
    return as_map(tokens[:, n - h * w :] if n != h * w else tokens, h, w)


def on_map(
    tokens: Tensor, h: int, w: int, op: Callable[[Tensor], Tensor], extra_op: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """Apply the map operation ``op`` (``(B, C, h, w) -> (B, C', h, w)``) to the map part of ``(B, N, C)``
    tokens and return ``(B, N, C')`` tokens; extra leading tokens (the class token) skip it, or go
    through ``extra_op`` when given."""
    n = tokens.shape[1]
    if n == h * w:
        return as_tokens(op(as_map(tokens, h, w)))
    extra = tokens[:, : n - h * w]
    return torch.cat([extra if extra_op is None else extra_op(extra), as_tokens(op(map_part(tokens, h, w)))], dim=1)


class Ops:
    """The operations a block's dataflow is made of, as the plain modules compute them.

    A module's ``ops`` is this (the class attribute :data:`PLAIN`) unless :func:`pvt.accel.accelerate`
    gave it its own; :meth:`pick` says which operations a call runs with, since faster ones take only
    some calls (inference on a supported device and dtype)."""

    def pick(self, module: nn.Module, x: Tensor) -> Ops:
        """The operations for a call of ``module`` on ``x``: the plain ones take every call."""
        return self

    def norm(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        return norm(x)

    def linear(self, layer: nn.Linear, x: Tensor, *acts: nn.Module | None) -> Tensor:
        """``layer(x)`` followed by the activations ``acts`` (None: no activation)."""
        x = layer(x)
        for act in acts:
            x = x if act is None else act(x)
        return x

    def conv(self, conv: nn.Conv2d, x: Tensor, act: nn.Module | None = None) -> Tensor:
        """``conv(x)`` on an ``(B, C, h, w)`` map, followed by ``act`` when given."""
        x = conv(x)
        return x if act is None else act(x)

    def q_kv(self, attn: SpatialReductionAttention, x: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
        """Queries from the tokens ``x``, keys and values from ``source`` (``x`` itself, or its reduction)."""
        return attn.q(x), attn.kv(source)

    def output(self, layer: nn.Linear, x: Tensor) -> Tensor:
        """``layer(x)`` for a residual branch's output projection (where faster operations add the
        residual in the same pass: :meth:`residual`)."""
        return layer(x)

    def residual(self, x: Tensor, branch: nn.Module, y: Tensor, h: int, w: int, drop_path: nn.Module) -> Tensor:
        """A residual branch: ``x + drop_path(branch(y, h, w))``."""
        return x + drop_path(branch(y, h, w, ops=self))


PLAIN = Ops()
"""The plain operations: every module calls its layers."""


class PatchEmbed(nn.Module):
    """Patchify and embed: ``(B, C_in, H, W) -> (B, h*w, C), h, w``.

    ``overlap=True`` (v2): kernel ``2S-1``, padding ``S-1``, so ``h = ceil(H / S)`` at any size.
    ``overlap=False`` (v1): ``S x S`` patches, ``h = floor(H / S)``.
    """

    ops: Ops = PLAIN

    def __init__(self, in_chans: int, embed_dim: int, stride: int, overlap: bool, eps: float = 1e-5):
        super().__init__()
        kernel, padding = (2 * stride - 1, stride - 1) if overlap else (stride, 0)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.proj.kernel_size[0], self.proj.stride[0], self.proj.padding[0]
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        ops = self.ops.pick(self, x)
        x = ops.conv(self.proj, x)
        h, w = x.shape[-2:]
        return ops.norm(self.norm, as_tokens(x)), h, w


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced map.

    ``(B, N, C), h, w -> (B, N, C)``. Keys/values are computed from
    * the map itself when ``sr_ratio == 1`` (plain attention, v1/v2 stage 4),
    * an ``R x R`` stride-``R`` convolution + LayerNorm (SRA, v1 and v2),
    * a ``pool_size x pool_size`` adaptive average pool, 1x1 conv, LayerNorm, GELU (``linear_sra``, v2-Li).
    Parameters are stored as the official ``q``, ``kv``, ``proj``, ``sr``, ``norm``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        linear_sra: bool = False,
        pool_size: int = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.linear_sra = linear_sra
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool: nn.Module | None = None
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        self.act: nn.Module | None = None
        if linear_sra:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim, eps=eps)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def reduced_tokens(self, h: int, w: int) -> int:
        """Number of key/value tokens for an ``h x w`` map (extra tokens not counted)."""
        if self.pool is not None:
            p = self.pool.output_size
            return p * p if isinstance(p, int) else p[0] * p[1]
        if self.sr is not None:
            r = self.sr.stride[0]
            return ((h - r) // r + 1) * ((w - r) // r + 1)
        return h * w

    def reduce(self, x: Tensor, h: int, w: int, ops: Ops = PLAIN) -> Tensor:
        """The key/value source: ``(B, N, C)`` -> ``(B, M, C)`` reduced tokens (needs ``self.sr``)."""
        assert self.sr is not None and self.norm is not None
        m = map_part(x, h, w)
        if self.pool is not None:
            m = self.pool(m)
        m = ops.norm(self.norm, as_tokens(ops.conv(self.sr, m)))
        return self.act(m) if self.act is not None else m

    def attend(self, q: Tensor, kv: Tensor) -> Tensor:
        """Queries ``(B, N, C)`` over keys and values ``(B, M, 2C)`` -> ``(B, N, C)`` before the projection."""
        b, n, c = q.shape
        q = q.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, c)

    def forward(self, x: Tensor, h: int, w: int, ops: Ops = PLAIN) -> Tensor:
        source = self.reduce(x, h, w, ops) if self.sr is not None else x
        q, kv = ops.q_kv(self, x, source)
        return self.proj_drop(ops.output(self.proj, self.attend(q, kv)))


class Mlp(nn.Module):
    """Feed-forward network ``(B, N, C), h, w -> (B, N, C)``.

    ``fc1 -> [ReLU] -> [3x3 depth-wise conv] -> GELU -> fc2``; the depth-wise conv is the
    convolutional FFN of v2 (``conv``), the ReLU belongs to linear SRA (B2-Li) as in the official code.
    """

    def __init__(self, dim: int, hidden: int, conv: bool = True, linear_sra: bool = False, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU() if linear_sra else None
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden) if conv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, h: int, w: int, ops: Ops = PLAIN) -> Tensor:
        if self.dwconv is None:
            x = ops.linear(self.fc1, x, self.relu, self.act)
        else:  # GELU after the depth-wise conv; the class token (not on the map) gets GELU alone
            x = ops.linear(self.fc1, x, self.relu)
            x = on_map(x, h, w, lambda m: ops.conv(self.dwconv, m, self.act), self.act)
        return self.drop(ops.output(self.fc2, self.drop(x)))


class Block(nn.Module):
    """Pre-norm transformer block ``(B, N, C), h, w -> (B, N, C)``: ``x + attn(norm1(x))``, then
    ``x + mlp(norm2(x))``.

    ``eps``: the block's LayerNorms; ``embed_eps``: the spatial reduction's LayerNorm (the official
    code uses the patch embedding's eps there).
    """

    ops: Ops = PLAIN

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        linear_sra: bool = False,
        conv_ffn: bool = True,
        pool_size: int = 7,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        embed_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SpatialReductionAttention(
            dim, num_heads, sr_ratio, linear_sra, pool_size, qkv_bias, attn_drop, drop, embed_eps
        )
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), conv=conv_ffn, linear_sra=linear_sra, drop=drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        ops = self.ops.pick(self, x)
        x = ops.residual(x, self.attn, ops.norm(self.norm1, x), h, w, self.drop_path)  # x + drop_path(attn(...))
        return ops.residual(x, self.mlp, ops.norm(self.norm2, x), h, w, self.drop_path)
