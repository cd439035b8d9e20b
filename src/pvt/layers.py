"""Building blocks of the Pyramid Vision Transformer: one class per concept.

Tokens travel as ``(B, N, C)`` sequences in row-major ``(h, w)`` order; a block receives the map's
``(h, w)`` so that it can view the tokens as an image where it needs one (spatial reduction, the
depth-wise convolution of the convolutional FFN). Some token sequences carry extra leading tokens
(the v1 class token): those are left out of every spatial operation.

Fast path. Under ``torch.no_grad()`` / ``torch.inference_mode()`` on CPU in float32 the blocks run
fused oneDNN kernels: linear + bias (+ ReLU / GELU) in one pass, the depth-wise convolution + GELU
in one pass, the output projections + residual add in one pass, and one q/kv GEMM where keys come
from the full map. Same parameters, same state dict, same results (float32 rounding only); the
plain PyTorch path runs otherwise (autograd, autocast, other dtypes/devices, tracing, compiling,
export) and can be forced with :func:`reference_path`.

GPU inference path. Under ``torch.autocast("cuda")`` with autograd off, the blocks use weights cast
to the autocast dtype once and cached (autocast re-casts every weight on every forward), and a Triton
LayerNorm that writes its output directly in the dtype of the layer reading it (see
:mod:`pvt.kernels`). Same parameters, same state dict, autocast's numerics; :func:`reference_path`
turns it off too. Both paths call the layers' functions directly, so forward hooks on the inner
layers (``q``, ``fc1``, norms ...) do not fire on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .kernels import cast_param, layer_norm

__all__ = [
    "PatchEmbed",
    "SpatialReductionAttention",
    "Mlp",
    "Block",
    "as_map",
    "as_tokens",
    "fast_path_active",
    "gpu_path_dtype",
    "reference_path",
]


def _has_fused_ops() -> bool:
    try:
        ops = torch.ops.mkldnn
        return torch.backends.mkldnn.is_available() and all(
            hasattr(ops, n) for n in ("_linear_pointwise", "_convolution_pointwise")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


_FUSED_OPS = _has_fused_ops()
_fast_path_enabled = True


@contextmanager
def reference_path() -> Iterator[None]:
    """Within this context every block runs the plain PyTorch ops (the reference for the fast path)."""
    global _fast_path_enabled
    previous, _fast_path_enabled = _fast_path_enabled, False
    try:
        yield
    finally:
        _fast_path_enabled = previous


def fast_path_active(x: Tensor) -> bool:
    """Whether the fused inference kernels apply to ``x``: a plain CPU float32 tensor, no autograd,
    no autocast, not tracing / scripting / compiling / exporting, not inside :func:`reference_path`."""
    return (
        _fast_path_enabled
        and _FUSED_OPS
        and type(x) is Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def gpu_path_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype when the GPU inference path applies to ``x`` (a CUDA tensor under
    ``torch.autocast("cuda")``, no autograd, not tracing / compiling / exporting, not inside
    :func:`reference_path`); ``None`` otherwise."""
    if not (
        _fast_path_enabled
        and type(x) is Tensor
        and x.is_cuda
        and not torch.is_grad_enabled()
        and torch.is_autocast_enabled("cuda")
    ):
        return None
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return None
    return torch.get_autocast_dtype("cuda")


def apply_linear(layer: nn.Linear, x: Tensor, dt: torch.dtype | None) -> Tensor:
    """``layer(x)``; on the GPU path (``dt``) with the weights cast once to ``dt``."""
    if dt is None:
        return layer(x)
    return F.linear(x, cast_param(layer, "weight", dt), cast_param(layer, "bias", dt))


def apply_conv(conv: nn.Conv2d, x: Tensor, dt: torch.dtype | None) -> Tensor:
    """``conv(x)``; on the GPU path (``dt``) with the weights cast once to ``dt``."""
    if dt is None:
        return conv(x)
    w, b = cast_param(conv, "weight", dt), cast_param(conv, "bias", dt)
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def apply_norm(norm: nn.LayerNorm, x: Tensor, dt: torch.dtype | None, out: torch.dtype | None = None) -> Tensor:
    """``norm(x)``; on the GPU path (``dt``) in float32 with its output in ``out`` (default ``dt``: the
    input of a matrix product) - float32 where it feeds the residual stream or an activation."""
    return norm(x) if dt is None else layer_norm(x, norm, out or dt)


def _linear(x: Tensor, layer: nn.Linear, act: str = "none") -> Tensor:
    """Fused ``act(x @ W.T + b)`` (``act``: none, relu, gelu; exact erf GELU)."""
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, act, [], "none")


def _linear_add(x: Tensor, layer: nn.Linear, residual: Tensor) -> Tensor:
    """Fused ``residual + x @ W.T + b``."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")


def _channels_last_weight(conv: nn.Conv2d) -> Tensor:
    """``conv.weight`` in channels-last memory order, cached until the weight changes (not a parameter,
    not in the state dict); spares oneDNN a reorder of the weight on every call."""
    w = conv.weight
    key = (w.data_ptr(), w._version, w.dtype, w.device)
    cached = conv.__dict__.get("_pvt_channels_last")
    if cached is None or cached[0] != key:
        cached = (key, w.detach().contiguous(memory_format=torch.channels_last))
        conv.__dict__["_pvt_channels_last"] = cached
    return cached[1]


def _conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` with the cached channels-last weight: channels-last output."""
    return F.conv2d(x, _channels_last_weight(conv), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_gelu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Fused ``gelu(conv(x))``; channels-last in, channels-last out."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "gelu", [], "none"
    )


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

    def forward(self, x: Tensor, dt: torch.dtype | None = None) -> tuple[Tensor, int, int]:
        """``dt``: the GPU path's dtype (:func:`gpu_path_dtype`); the tokens stay float32 there."""
        x = _conv(x, self.proj) if fast_path_active(x) else apply_conv(self.proj, x, dt)
        h, w = x.shape[-2:]
        return apply_norm(self.norm, as_tokens(x), dt, torch.float32), h, w


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

    def _reduce(self, x: Tensor, h: int, w: int, fused: bool = False, dt: torch.dtype | None = None) -> Tensor:
        """The key/value source: ``(B, N, C)`` -> ``(B, M, C)`` reduced tokens (needs ``self.sr``)."""
        assert self.sr is not None and self.norm is not None
        n = x.shape[1]
        m = as_map(x[:, n - h * w :] if n != h * w else x, h, w)
        if self.pool is not None:
            m = self.pool(m)
        m = as_tokens(_conv(m, self.sr) if fused else apply_conv(self.sr, m, dt))
        m = apply_norm(self.norm, m, dt, torch.float32 if self.act is not None else None)
        return self.act(m) if self.act is not None else m

    def _attend(self, q: Tensor, kv: Tensor, b: int, n: int, c: int) -> Tensor:
        """``q (B, N, C)``, ``kv (B, M, 2C)`` -> attention output ``(B, N, C)`` before the projection."""
        q = q.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, c)

    def forward(self, x: Tensor, h: int, w: int, dt: torch.dtype | None = None) -> Tensor:
        """``dt``: the GPU path's dtype (:func:`gpu_path_dtype`), or None for the plain modules."""
        b, n, c = x.shape
        m = self._reduce(x, h, w, dt=dt) if self.sr is not None else x
        out = self._attend(apply_linear(self.q, x, dt), apply_linear(self.kv, m, dt), b, n, c)
        return self.proj_drop(apply_linear(self.proj, out, dt))

    def _qkv_params(self) -> tuple[Tensor, Tensor | None]:
        """``q`` and ``kv`` stacked into one weight (and bias), cached until either changes (not in the
        state dict): the fast path's single q/k/v GEMM does not re-concatenate them on every call."""
        params = [p for p in (self.q.weight, self.kv.weight, self.q.bias, self.kv.bias) if p is not None]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self.__dict__.get("_pvt_qkv")
        if cached is None or cached[0] != key:
            weight = torch.cat([self.q.weight, self.kv.weight]).detach()
            bias = None if self.q.bias is None else torch.cat([self.q.bias, self.kv.bias]).detach()
            cached = (key, weight, bias)
            self.__dict__["_pvt_qkv"] = cached
        return cached[1], cached[2]

    def forward_fused(self, x: Tensor, h: int, w: int, residual: Tensor) -> Tensor:
        """Inference fast path: ``residual + forward(x, h, w)`` with fused kernels (dropout inactive)."""
        b, n, c = x.shape
        if self.sr is None:  # keys from the full map: one GEMM for q, k and v
            weight, bias = self._qkv_params()
            qkv = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
            q, kv = qkv[..., :c], qkv[..., c:]
        else:
            q, kv = _linear(x, self.q), _linear(self._reduce(x, h, w, fused=True), self.kv)
        return _linear_add(self._attend(q, kv, b, n, c), self.proj, residual)


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

    def _dwconv(self, x: Tensor, h: int, w: int, fused_gelu: bool = False, dt: torch.dtype | None = None) -> Tensor:
        """The depth-wise convolution on the map part of ``(B, N, C)`` tokens (extra leading tokens pass)."""
        assert self.dwconv is not None
        dwconv = self.dwconv
        conv = (lambda m: _conv_gelu(m, dwconv)) if fused_gelu else (lambda m: apply_conv(dwconv, m, dt))
        n = x.shape[1]
        if n == h * w:
            return as_tokens(conv(as_map(x, h, w)))
        extra = n - h * w  # class token: skips the convolution
        head = F.gelu(x[:, :extra]) if fused_gelu else x[:, :extra]
        return torch.cat([head, as_tokens(conv(as_map(x[:, extra:], h, w)))], dim=1)

    def forward(self, x: Tensor, h: int, w: int, dt: torch.dtype | None = None) -> Tensor:
        """``dt``: the GPU path's dtype (:func:`gpu_path_dtype`), or None for the plain modules."""
        x = apply_linear(self.fc1, x, dt)
        if self.relu is not None:
            x = self.relu(x)
        if self.dwconv is not None:
            x = self._dwconv(x, h, w, dt=dt)
        x = self.drop(self.act(x))
        return self.drop(apply_linear(self.fc2, x, dt))

    def forward_fused(self, x: Tensor, h: int, w: int, residual: Tensor) -> Tensor:
        """Inference fast path: ``residual + forward(x, h, w)`` with fused kernels (dropout inactive)."""
        if self.dwconv is None:
            x = _linear(x, self.fc1, "gelu")
        else:
            x = self._dwconv(_linear(x, self.fc1, "relu" if self.relu is not None else "none"), h, w, True)
        return _linear_add(x.contiguous(), self.fc2, residual)


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
        self._stochastic = drop > 0 or attn_drop > 0 or drop_path > 0

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        if fast_path_active(x) and not (self.training and self._stochastic):
            x = self.attn.forward_fused(self.norm1(x), h, w, residual=x)
            return self.mlp.forward_fused(self.norm2(x), h, w, residual=x)
        dt = gpu_path_dtype(x)
        # linear SRA pools the normalised map before its first matrix product: keep that in float32
        pooled = self.attn.pool is not None
        x = x + self.drop_path(self.attn(apply_norm(self.norm1, x, dt, torch.float32 if pooled else None), h, w, dt))
        return x + self.drop_path(self.mlp(apply_norm(self.norm2, x, dt), h, w, dt))
