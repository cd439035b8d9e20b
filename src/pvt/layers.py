"""Building blocks of the Pyramid Vision Transformer: one class per concept.

Tokens travel as ``(B, N, C)`` sequences in row-major ``(h, w)`` order; a block receives the map's
``(h, w)`` so that it can view the tokens as an image where it needs one (spatial reduction, the
depth-wise convolution of the convolutional FFN). Some token sequences carry extra leading tokens
(the v1 class token): those are left out of every spatial operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

__all__ = ["PatchEmbed", "SpatialReductionAttention", "Mlp", "Block", "as_map", "as_tokens"]


def as_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """``(B, h*w, C)`` tokens -> ``(B, C, h, w)`` map, as a channels-last view (no copy)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


def as_tokens(x: Tensor) -> Tensor:
    """``(B, C, h, w)`` map -> ``(B, h*w, C)`` tokens (no copy when ``x`` is channels-last)."""
    return x.flatten(2).transpose(1, 2)


class PatchEmbed(nn.Module):
    """Patchify and embed: ``(B, C_in, H, W) -> (B, h*w, C), h, w``.

    ``overlap=True`` (v2): kernel ``2S-1``, padding ``S-1``, so ``h = ceil(H / S)`` at any size.
    ``overlap=False`` (v1): ``S x S`` patches, ``h = floor(H / S)``.
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int, overlap: bool, eps: float = 1e-5):
        super().__init__()
        kernel, padding = (2 * stride - 1, stride - 1) if overlap else (stride, 0)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.proj.kernel_size[0], self.proj.stride[0], self.proj.padding[0]
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(as_tokens(x)), h, w


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced map.

    ``(B, N, C), h, w -> (B, N, C)``. Keys/values are computed from
    * the map itself when ``sr_ratio == 1`` (plain attention, v1/v2 stage 4),
    * an ``R x R`` stride-``R`` convolution + LayerNorm (SRA, v1 and v2),
    * a ``pool_size x pool_size`` adaptive average pool, 1x1 conv, LayerNorm, GELU (linear SRA, v2-Li).
    Parameters are stored as the official ``q``, ``kv``, ``proj``, ``sr``, ``norm``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        linear: bool = False,
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
        self.linear = linear
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool: nn.Module | None = None
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        self.act: nn.Module | None = None
        if linear:
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

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr is not None:
            m = as_map(x[:, n - h * w :] if n != h * w else x, h, w)
            if self.pool is not None:
                m = self.pool(m)
            m = self.norm(as_tokens(self.sr(m)))
            if self.act is not None:
                m = self.act(m)
        else:
            m = x
        kv = self.kv(m).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """Feed-forward network ``(B, N, C), h, w -> (B, N, C)``.

    ``fc1 -> [ReLU] -> [3x3 depth-wise conv] -> GELU -> fc2``; the depth-wise conv is the
    convolutional FFN of v2, the ReLU is added by linear SRA (B2-Li) as in the official code.
    """

    def __init__(self, dim: int, hidden: int, conv: bool = True, relu: bool = False, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU() if relu else None
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden) if conv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.fc1(x)
        if self.relu is not None:
            x = self.relu(x)
        if self.dwconv is not None:
            n = x.shape[1]
            if n == h * w:
                x = as_tokens(self.dwconv(as_map(x, h, w)))
            else:  # extra leading tokens (class token) skip the convolution
                extra = n - h * w
                x = torch.cat([x[:, :extra], as_tokens(self.dwconv(as_map(x[:, extra:], h, w)))], dim=1)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        linear_sra: bool,
        conv_ffn: bool,
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
        self.mlp = Mlp(dim, int(dim * mlp_ratio), conv=conv_ffn, relu=linear_sra, drop=drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))
