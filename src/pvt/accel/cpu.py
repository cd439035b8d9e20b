"""The CPU inference path: fused oneDNN kernels per block, in float32, bfloat16 or int8, and batches
run in pieces.

Kernels. Where the plain modules run one kernel per operation, these functions run
* ``fc1`` + bias (+ ReLU / exact GELU) and ``q`` / ``kv`` + bias in one oneDNN pass each (no
  bias-broadcast copy),
* the 3x3 depth-wise convolution + exact GELU of the convolutional FFN in one pass,
* the attention and MLP output projections + the residual add in one pass,
* one GEMM for ``q``, ``k`` and ``v`` where keys come from the full map (no spatial reduction),
* convolutions on channels-last token views with channels-last weights, made once and cached.
They read the plain modules' parameters and skip the modules' ``__call__`` (so no hooks, no dropout:
:mod:`pvt.accel` only runs them for inference without hooks).

Precisions (:class:`Plan`; which one a call takes is :mod:`pvt.accel.modules`' choice):
* ``float32``: same parameters, same results up to float32 rounding.
* ``bfloat16`` (the model's precision, or under ``torch.autocast("cpu", dtype=torch.bfloat16)``):
  the same fused kernels on bf16 activations and bf16 copies of the weights (made once, cached);
  LayerNorm statistics, softmax and the GEMMs' sums in float32, as oneDNN and ATen compute them.
* ``int8`` (:func:`pvt.accel.quant.quantize`): every linear layer (``q``, ``kv``, ``proj``, ``fc1``,
  ``fc2``) as a oneDNN u8 x s8 product with the fused bias / activation / residual add; weights
  symmetric per output channel, activations asymmetric per tensor, from calibrated ranges (static)
  or from each call's own min / max (dynamic). Everything else (convolutions, LayerNorm, attention)
  in the plan's compute dtype: bfloat16 on CPUs that multiply it natively, else float32.

Pieces. The largest tensor of a forward is the stage-1 MLP hidden activation
``(B, H/4 * W/4, C_1 * mlp_ratio_1)``. Run as a whole, a large batch allocates it as fresh memory
pages on every call; :func:`piece_size` splits a batch into as few even pieces as keep it under a
budget (:func:`piece_budget`) that the C allocator serves from its heap. No layer mixes samples, so
per-sample results are unchanged (except for dynamic int8, whose activation ranges are per piece).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Block, Mlp, PatchEmbed, SpatialReductionAttention, as_tokens, map_part, on_map
from ..models.model import PyramidVisionTransformer
from .runtime import MMAP_THRESHOLD, allocator_mode

__all__ = [
    "FUSED_OPS",
    "INT8_OPS",
    "kernels_fail",
    "DEFAULT_PIECE_BYTES",
    "Plan",
    "plan",
    "piece_budget",
    "piece_size",
    "patch_embed",
    "block",
]

DEFAULT_PIECE_BYTES = 16 * 2**20
"""The piece budget under glibc's own malloc settings: blocks this size are reused from its heap
(larger ones are fresh pages on every call)."""


def _has_ops(namespace: str, names: tuple[str, ...]) -> bool:
    try:
        ops = getattr(torch.ops, namespace)
        return torch.backends.mkldnn.is_available() and all(hasattr(ops, n) for n in names)
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


FUSED_OPS = _has_ops("mkldnn", ("_linear_pointwise", "_convolution_pointwise"))
"""Whether this PyTorch build has the fused oneDNN operators (the CPU path needs them)."""
INT8_OPS = _has_ops("onednn", ("qlinear_pointwise", "qlinear_prepack"))
"""Whether this PyTorch build has oneDNN's quantised linear operators (the int8 path needs them)."""


# ------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class Plan:
    """What one call of the CPU path computes in: ``precision`` (float32, bfloat16, int8), ``dtype``
    of the activations and of every non-int8 kernel, and for int8 whether activations are quantised
    from calibrated ranges (``static``) and to 7 bits (``reduce_range``, CPUs without VNNI).
    ``observe``: record activation ranges instead (calibration; computes in ``dtype``)."""

    precision: str = "float32"
    dtype: torch.dtype = torch.float32
    static: bool = False
    reduce_range: bool = False
    observe: bool = False
    min_width: int = 0
    """int8: only layers with at least this many outputs run int8 (the others in ``dtype``)."""


_PLANS: dict[tuple, Plan] = {}


def plan(precision: str, dtype: torch.dtype, static: bool = False, reduce_range: bool = False,
         observe: bool = False, min_width: int = 0) -> Plan:
    """The (shared, immutable) :class:`Plan` of these settings."""
    key = (precision, dtype, static, reduce_range, observe, min_width)
    found = _PLANS.get(key)
    if found is None:
        found = _PLANS[key] = Plan(precision, dtype, static, reduce_range, observe, min_width)
    return found


INT8_MIN_WIDTH = {torch.bfloat16: 160, torch.float32: 0}
"""Which linear layers pay in int8, by compute dtype: those with at least this many outputs.

An int8 product needs its input quantised first: one pass over the ``M x K`` input (two from bf16,
which ATen's quantizer reads only after a conversion to float32), while the product itself saves
time in proportion to ``M x K x N``. So the output width ``N`` alone decides whether int8 pays. Beside
float32 GEMMs it pays for every PVT layer; beside bf16 GEMMs (CPUs with native bf16) the narrow
layers of the first stages (``fc2`` / ``q`` / ``proj`` of 32-128 channels on tens of thousands of
tokens) run faster in bf16 (measurements: docs/speed.md)."""


F32 = plan("float32", torch.float32)
BF16 = plan("bfloat16", torch.bfloat16)
AUTOCAST_BF16 = plan("autocast", torch.bfloat16)
"""bfloat16 where oneDNN's fused bf16 kernels do not run (:func:`pvt.accel.capability.bf16_kernels`):
the plain modules under CPU bf16 autocast, with the fused path's float32 outputs."""


# ------------------------------------------------------------------------- what runs here
def kernels_fail(dtype: torch.dtype, int8: bool = False) -> str | None:
    """None where the CPU path's oneDNN kernels run in ``dtype`` (with ``int8``: the u8 x s8 products
    with ``dtype`` around them) in this PyTorch on this CPU; else why not, in one line.

    The operators must exist (:data:`FUSED_OPS`, :data:`INT8_OPS`; older PyTorch builds lack some) and
    build: oneDNN refuses bf16 kernels on CPUs without AVX-512 BW/VL/DQ or AVX-NE-CONVERT, and calling
    conventions change between PyTorch versions. Each kind is tried once per process on tiny tensors,
    through the same calls the kernels make."""
    if not FUSED_OPS:
        return "this PyTorch has no fused oneDNN operators (torch.ops.mkldnn._linear_pointwise / _convolution_pointwise)"
    if int8 and not INT8_OPS:
        return "this PyTorch has no oneDNN quantised linear operators (torch.ops.onednn.qlinear_pointwise)"
    return _try_kernels(dtype, int8)


@functools.lru_cache(maxsize=None)
def _try_kernels(dtype: torch.dtype, int8: bool) -> str | None:
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(dtype, str(dtype))
    what = f"int8 with {name}" if int8 else name
    try:
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 5, 16, generator=g).to(dtype)
            w, b = torch.randn(32, 16, generator=g), torch.randn(32, generator=g)
            residual = torch.randn(2, 5, 32, generator=g).to(dtype)
            for act in ("none", "relu", "gelu"):
                _fused_linear(x, w.to(dtype), b.to(dtype), act)
            _fused_linear(x, w.to(dtype), b.to(dtype), residual=residual)
            if int8:
                weights, qx = _int8_weights(w, b), _quantize(x.float(), 0.05, 64)
                for act in ("none", "relu", "gelu"):
                    _qlinear(qx, 0.05, 64, weights, dtype, act)
                _qlinear(qx, 0.05, 64, weights, dtype, residual=residual)
            m = torch.randn(1, 8, 5, 4, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
            dw = torch.randn(8, 1, 3, 3, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
            _fused_conv_gelu(m, dw, torch.zeros(8, dtype=dtype), [1, 1], [1, 1], [1, 1], 8)
            F.conv2d(m, torch.randn(4, 8, 2, 2, generator=g).to(dtype).contiguous(memory_format=torch.channels_last),
                     None, 2)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # oneDNN's advice cut off
        return f"oneDNN's fused {what} kernels do not run here ({first[:160]})"
    return None


# ----------------------------------------------------------------------------------- pieces
def piece_budget(chunk_bytes: int | None = None) -> int:
    """Bytes of stage-1 hidden activation per piece: ``chunk_bytes`` when given (0: whole batches),
    else :data:`~pvt.accel.runtime.MMAP_THRESHOLD` (32 MiB) while the tuned allocator is in effect, the
    largest block glibc then keeps in its heap, or :data:`DEFAULT_PIECE_BYTES` (16 MiB) under glibc's
    own settings."""
    if chunk_bytes is not None:
        return chunk_bytes
    return MMAP_THRESHOLD if allocator_mode() == "tuned" else DEFAULT_PIECE_BYTES


def piece_size(
    model: PyramidVisionTransformer, batch: int, height: int, width: int, budget: int, itemsize: int = 4
) -> int | None:
    """Images per piece when a batch of ``(batch, C, height, width)`` is split into as few even pieces
    as keep each piece's stage-1 hidden activation (``itemsize`` bytes per element: 4 in float32, 2 in
    bfloat16) under ``budget`` bytes; None: no split (one image, a budget <= 0, or the batch fits). The
    one rule for the CPU inference pieces and the trainer's automatic micro-batches."""
    if budget <= 0 or batch < 2:
        return None
    cfg = model.config
    h, w = model.stages[0].patch_embed.output_size(height, width)
    total = batch * h * w * int(cfg.embed_dims[0] * cfg.mlp_ratios[0]) * itemsize
    pieces = min(batch, -(-total // budget))
    return -(-batch // pieces) if pieces > 1 else None


# ---------------------------------------------------------------------------------- weights
WeightPair = tuple[Tensor, Tensor | None]


def _layer_weights(layer: nn.Linear | nn.Conv2d) -> tuple[tuple[Tensor | None, ...], Callable[[], WeightPair]]:
    """The sources and maker of a layer's ``(weight, bias)`` for the weight cache."""
    w, b = layer.weight, layer.bias
    return (w, b), lambda: (w.detach(), None if b is None else b.detach())


def _cast(module: nn.Module, key: str, sources, make: Callable[[], WeightPair], dtype: torch.dtype) -> WeightPair:
    """``make()``'s weight and bias in ``dtype`` (cached; float32 weights made fresh only when derived)."""
    return module.weight_cache.get(
        (key, dtype), sources, lambda: tuple(None if t is None else t.to(dtype) for t in make())
    )


def _int8_weights(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """oneDNN's packed int8 weight, per-output-channel scales and zero points (symmetric: 0), and the
    float32 bias of a ``(N, K)`` float weight."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(q, None)
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    return packed, scale, zero, None if bias is None else bias.float()


# -------------------------------------------------------------------------- int8 activations
_QUANT_WARNING = "torch.quantize_per_tensor"


def _quantize(x: Tensor, scale: float, zero_point: int) -> Tensor:
    """``x`` as uint8 codes ``round(x / scale) + zero_point`` clamped to [0, 255], in one vectorised
    pass (ATen's quantizer; its storage read as plain uint8, no copy)."""
    with warnings.catch_warnings():  # deprecated in favour of torch.ao's decomposed ops, which take 3 passes
        warnings.filterwarnings("ignore", message=_QUANT_WARNING)
        q = torch.quantize_per_tensor(x if x.dtype == torch.float32 else x.float(), scale, zero_point, torch.quint8)
    # a plain uint8 tensor on the quantized tensor's storage (``q.view(torch.uint8)`` keeps the quantized
    # dispatch key, which oneDNN's operators must not get)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def qparams(lo: float, hi: float, reduce_range: bool = False) -> tuple[float, int]:
    """Scale and zero point mapping ``[lo, hi]`` (widened to hold 0) onto uint8 codes 0..255 (0..127
    with ``reduce_range``)."""
    top = 127 if reduce_range else 255
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / top, 1e-8)
    return scale, min(top, max(0, round(-lo / scale)))


def _activation_qparams(module: nn.Module, key: str, x: Tensor, p: Plan) -> tuple[float, int]:
    if p.static:
        found = module.activation_qparams.get(key)
        if found is None:
            raise RuntimeError(
                f"{type(module).__name__} has no calibrated range for {key!r}: calibrate with "
                "pvt.accel.quant.quantize(model, calibration=...) on images of this model's input"
            )
        return found
    lo, hi = torch.aminmax(x)
    return qparams(lo.item(), hi.item(), p.reduce_range)


def _observe(module: nn.Module, key: str, x: Tensor) -> None:
    """Widen ``module.activation_ranges[key]`` to hold ``x``'s values (calibration)."""
    lo, hi = (float(v) for v in torch.aminmax(x.float()))
    old = module.activation_ranges.get(key)
    module.activation_ranges[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


# ---------------------------------------------------------------------------------- kernels
def _width(layer: nn.Linear | None, weights: tuple | None) -> int:
    """Outputs of ``layer``, or of the derived weights (the weight sources stacked: q and kv)."""
    if layer is not None:
        return layer.out_features
    return sum(t.shape[0] for t in weights[0] if t is not None and t.ndim == 2)


def _linear(
    module: nn.Module,
    key: str,
    p: Plan,
    x: Tensor,
    layer: nn.Linear | None = None,
    act: str = "none",
    residual: Tensor | None = None,
    weights: tuple[tuple[Tensor | None, ...], Callable[[], WeightPair]] | None = None,
) -> Tensor:
    """``act(x @ W.T + b)`` (``act``: none, relu, gelu; exact erf GELU), or ``residual + x @ W.T + b``,
    in one fused pass, for ``layer``'s weights or the derived ``weights`` (sources, maker) cached under
    ``key``."""
    if p.observe:
        _observe(module, key, x)
    if p.precision == "int8" and not p.observe and _width(layer, weights) >= p.min_width:
        sources, make = weights or _layer_weights(layer)
        int8 = module.weight_cache.get((key, "int8"), sources, lambda: _int8_weights(*make()))
        scale, zero = _activation_qparams(module, key, x, p)
        return _qlinear(_quantize(x, scale, zero), scale, zero, int8, p.dtype, act, residual)
    if p.dtype == torch.float32 and weights is None:
        w, b = layer.weight, layer.bias
    else:
        w, b = _cast(module, key, *(weights or _layer_weights(layer)), p.dtype)
    return _fused_linear(x, w, b, act, residual)


def _fused_linear(x: Tensor, w: Tensor, b: Tensor | None, act: str = "none", residual: Tensor | None = None) -> Tensor:
    """oneDNN's ``act(x @ w.T + b)`` or ``residual + x @ w.T + b`` (one home for the operators' calling convention)."""
    if residual is None:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], "none")
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, b, "add")


def _qlinear(qx: Tensor, scale: float, zero: int, int8: tuple, dtype: torch.dtype, act: str = "none",
             residual: Tensor | None = None) -> Tensor:
    """oneDNN's u8 x s8 product of the uint8 codes ``qx`` (``scale``, ``zero``) and the :func:`_int8_weights`
    ``int8``, output in ``dtype``: ``act(...)`` or ``residual + ...``."""
    packed, w_scale, w_zero, bias = int8
    if residual is None:
        return torch.ops.onednn.qlinear_pointwise(qx, scale, zero, packed, w_scale, w_zero, bias, 1.0, 0, dtype, act,
                                                  [], "none")
    return torch.ops.onednn.qlinear_pointwise.binary(
        qx, scale, zero, packed, w_scale, w_zero, residual, bias, 1.0, 0, dtype, 1.0, 0, "add", 1.0, "none", [], "",
    )


def _conv_weights(module: nn.Module, key: str, conv: nn.Conv2d, dtype: torch.dtype) -> WeightPair:
    """``conv``'s weight in channels-last order and ``dtype``, and its bias in ``dtype`` (cached: spares
    oneDNN a reorder of the weight on every call)."""
    w, b = conv.weight, conv.bias

    def make() -> WeightPair:
        weight = w.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        return weight, None if b is None else b.detach().to(dtype)

    return module.weight_cache.get((key, dtype), (w, b), make)


def _conv(module: nn.Module, key: str, conv: nn.Conv2d, x: Tensor, p: Plan) -> Tensor:
    """``conv(x)`` in ``p.dtype`` with cached channels-last weights: channels-last output."""
    weight, bias = _conv_weights(module, key, conv, p.dtype)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_gelu(module: nn.Module, key: str, conv: nn.Conv2d, x: Tensor, p: Plan) -> Tensor:
    """Fused ``gelu(conv(x))``; channels-last in, channels-last out."""
    if p.dtype == torch.float32:
        weight, bias = conv.weight, conv.bias
    else:
        weight, bias = _conv_weights(module, key, conv, p.dtype)
    return _fused_conv_gelu(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)


def _fused_conv_gelu(x: Tensor, weight: Tensor, bias: Tensor | None, padding, stride, dilation, groups: int) -> Tensor:
    """oneDNN's ``gelu(conv2d(x))`` (exact GELU)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "gelu", [], "none")


def _stacked_qkv(attn: SpatialReductionAttention) -> tuple[tuple[Tensor | None, ...], Callable[[], WeightPair]]:
    """``q`` and ``kv`` stacked into one ``(3C, C)`` weight (and bias): sources and maker."""

    def make() -> WeightPair:
        weight = torch.cat([attn.q.weight, attn.kv.weight]).detach()
        bias = None if attn.q.bias is None else torch.cat([attn.q.bias, attn.kv.bias]).detach()
        return weight, bias

    return (attn.q.weight, attn.kv.weight, attn.q.bias, attn.kv.bias), make


# ----------------------------------------------------------------------------------- layers
def patch_embed(embed: PatchEmbed, x: Tensor, p: Plan = F32) -> tuple[Tensor, int, int]:
    """:class:`~pvt.layers.PatchEmbed` on the CPU path: ``(B, C_in, H, W) -> (B, h*w, C), h, w``
    (tokens in ``p.dtype``)."""
    x = _conv(embed, "proj", embed.proj, x.to(p.dtype), p)
    h, w = x.shape[-2:]
    return embed.norm(as_tokens(x)), h, w


def _reduce(blk: Block, x: Tensor, h: int, w: int, p: Plan) -> Tensor:
    """The attention's key/value source ``(B, N, C) -> (B, M, C)`` (as ``SpatialReductionAttention.reduce``)."""
    attn = blk.attn
    m = map_part(x, h, w)
    if attn.pool is not None:
        m = attn.pool(m)
    m = attn.norm(as_tokens(_conv(blk, "attn.sr", attn.sr, m, p)))
    return attn.act(m) if attn.act is not None else m


def _attention_add(blk: Block, x: Tensor, h: int, w: int, residual: Tensor, p: Plan) -> Tensor:
    """``residual + attn(x, h, w)`` for ``x (B, N, C)``."""
    attn = blk.attn
    if attn.sr is None:  # keys from the full map: one GEMM for q, k and v
        qkv = _linear(blk, "attn.qkv", p, x, weights=_stacked_qkv(attn))
        c = x.shape[-1]
        q, kv = qkv[..., :c], qkv[..., c:]
    else:
        q = _linear(blk, "attn.q", p, x, attn.q)
        kv = _linear(blk, "attn.kv", p, _reduce(blk, x, h, w, p), attn.kv)
    return _linear(blk, "attn.proj", p, attn.attend(q, kv), attn.proj, residual=residual)


def _mlp_add(blk: Block, x: Tensor, h: int, w: int, residual: Tensor, p: Plan) -> Tensor:
    """``residual + mlp(x, h, w)`` for ``x (B, N, C)``."""
    mlp: Mlp = blk.mlp
    if mlp.dwconv is None:
        if mlp.relu is None:
            x = _linear(blk, "mlp.fc1", p, x, mlp.fc1, "gelu")
        else:
            x = F.gelu(_linear(blk, "mlp.fc1", p, x, mlp.fc1, "relu"))
    else:
        dwconv = mlp.dwconv
        x = _linear(blk, "mlp.fc1", p, x, mlp.fc1, "relu" if mlp.relu is not None else "none")
        # the class token gets its GELU alone
        x = on_map(x, h, w, lambda m: _conv_gelu(blk, "mlp.dwconv", dwconv, m, p), F.gelu)
    return _linear(blk, "mlp.fc2", p, x.contiguous(), mlp.fc2, residual=residual)


def block(blk: Block, x: Tensor, h: int, w: int, p: Plan = F32) -> Tensor:
    """:class:`~pvt.layers.Block` on the CPU path: ``(B, N, C), h, w -> (B, N, C)`` in ``p.dtype``."""
    x = x.to(p.dtype)
    x = _attention_add(blk, blk.norm1(x), h, w, x, p)
    return _mlp_add(blk, blk.norm2(x), h, w, x, p)
