"""The CPU inference path: fused oneDNN kernels for a block's operations, in float32, bfloat16 or int8,
and batches run in pieces.

Kernels (:class:`CpuOps`, the operations :mod:`pvt.layers`' dataflow calls). Where the plain modules run
one kernel per operation, these run
* ``fc1`` + bias (+ ReLU / exact GELU) and ``q`` / ``kv`` + bias in one oneDNN pass each (no
  bias-broadcast copy),
* the 3x3 depth-wise convolution + exact GELU of the convolutional FFN in one pass,
* the attention and MLP output projections + the residual add in one pass,
* one GEMM for ``q``, ``k`` and ``v`` where keys come from the full map (no spatial reduction),
* on AVX2-only CPUs, float32 products of few rows through MKL's GEMM (``addmm``) with the ReLU /
  residual add after it (:data:`MKL_ROWS`: oneDNN's float32 GEMM is the slower one there),
* convolutions on channels-last token views with channels-last weights, made once and cached; the
  patch-embedding and spatial-reduction convolutions in float32 with weights reordered once into
  oneDNN's layout for the input's shape (:func:`_packed_conv_weight`; ATen's convolution reorders
  them on every call).
They read the plain modules' parameters and skip the layers' ``__call__`` (so no hooks, no dropout:
:mod:`pvt.accel` only picks them for inference without hooks).

Precisions (which one a call computes in: :meth:`pvt.accel.record.Acceleration.cpu_dtype`):
* ``float32``: same parameters, same results up to float32 rounding.
* ``bfloat16`` (the model's precision, or under ``torch.autocast("cpu", dtype=torch.bfloat16)``):
  the same fused kernels on bf16 activations and bf16 copies of the weights (made once, cached);
  LayerNorm statistics, softmax and the GEMMs' sums in float32, as oneDNN and ATen compute them.
* ``int8`` (:func:`pvt.accel.quant.quantize`): every linear layer (``q``, ``kv``, ``proj``, ``fc1``,
  ``fc2``) as a oneDNN u8 x s8 product with the fused bias / activation / residual add; weights symmetric per
  output channel, activations asymmetric per tensor, from calibrated ranges (static) or from each
  call's own min / max (dynamic). Everything else (convolutions, LayerNorm, attention) in the compute
  dtype: bfloat16 on CPUs that multiply it natively, else float32.

Pieces. The largest tensor of a forward is the stage-1 MLP hidden activation
``(B, H/4 * W/4, C_1 * mlp_ratio_1)``. Run as a whole, a large batch allocates it as fresh memory
pages on every call; :func:`piece_size` splits a batch into as few even pieces as keep it under a
budget (:meth:`~pvt.accel.record.Acceleration.piece_budget`) that the C allocator serves from its heap.
No layer mixes samples, so per-sample results are unchanged (except for dynamic int8, whose
activation ranges are per piece).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Ops, SpatialReductionAttention
from ..models.model import PyramidVisionTransformer
from .cache import OpsState

__all__ = ["FUSED_OPS", "INT8_OPS", "INT8_MIN_WIDTH", "MKL_ROWS", "kernels_fail", "mkl_rows", "piece_size", "qparams",
           "CpuOps"]


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


INT8_MIN_WIDTH = {torch.bfloat16: 160, torch.float32: 0}
"""Which linear layers pay in int8, by compute dtype: those with at least this many outputs.

An int8 product needs its input quantised first: one pass over the ``M x K`` input (two from bf16,
which ATen's quantizer reads only after a conversion to float32), while the product itself saves
time in proportion to ``M x K x N``. So the output width ``N`` alone decides whether int8 pays. Beside
float32 GEMMs it pays for every PVT layer; beside bf16 GEMMs (CPUs with native bf16) the narrow
layers of the first stages (``fc2`` / ``q`` / ``proj`` of 32-128 channels on tens of thousands of
tokens) run faster in bf16 (measurements: docs/speed.md)."""


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


def _cast(state: OpsState, key: str, sources, make: Callable[[], WeightPair], dtype: torch.dtype) -> WeightPair:
    """``make()``'s weight and bias in ``dtype`` (cached; float32 weights made fresh only when derived)."""
    return state.weight_cache.get(
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
def _quantize(x: Tensor, scale: float, zero_point: int) -> Tensor:
    """``x`` as uint8 codes ``round(x / scale) + zero_point`` clamped to [0, 255], in one vectorised
    pass (ATen's quantizer; its storage read as plain uint8, no copy)."""
    # the ATen operator itself: torch.quantize_per_tensor's Python binding warns that it is deprecated (in
    # favour of torch.ao's decomposed ops, which take 3 passes), and silencing that per call would take
    # warnings.catch_warnings(), which swaps the process's filter list (not thread-safe) on every call
    q = torch.ops.aten.quantize_per_tensor.default(x if x.dtype == torch.float32 else x.float(), scale, zero_point,
                                                   torch.quint8)
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


def _activation_qparams(state: OpsState, key: str, x: Tensor) -> tuple[float, int]:
    if state.record.int8 == "static":
        found = state.activation_qparams.get(key)
        if found is None:
            raise RuntimeError(
                f"this model has no calibrated range for {key!r}: calibrate with "
                "pvt.accel.quant.quantize(model, calibration=...) on images of this model's input"
            )
        return found
    lo, hi = torch.aminmax(x)
    return qparams(lo.item(), hi.item(), state.record.reduce_range)


def _observe(state: OpsState, key: str, x: Tensor) -> None:
    """Widen ``state.activation_ranges[key]`` to hold ``x``'s values (calibration)."""
    lo, hi = (float(v) for v in torch.aminmax(x.float()))
    old = state.activation_ranges.get(key)
    state.activation_ranges[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


# ---------------------------------------------------------------------------------- kernels
def _linear(
    state: OpsState,
    key: str,
    dtype: torch.dtype,
    x: Tensor,
    layer: nn.Linear | None = None,
    act: str = "none",
    weights: tuple[tuple[Tensor | None, ...], Callable[[], WeightPair]] | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """``act(x @ W.T + b)`` (``act``: none, relu, gelu; exact erf GELU) or ``residual + x @ W.T + b`` in one
    fused pass, in ``dtype`` or int8 as the record says, for ``layer``'s weights or the derived
    ``weights`` (sources, maker) cached under ``key``."""
    record = state.record
    if record.int8 == "observe":
        _observe(state, key, x)
    elif record.precision == "int8":
        width = layer.out_features if layer is not None else sum(t.shape[0] for t in weights[0] if t is not None and t.ndim == 2)
        if width >= record.int8_min_width:
            sources, make = weights or _layer_weights(layer)
            int8 = state.weight_cache.get((key, "int8"), sources, lambda: _int8_weights(*make()))
            scale, zero = _activation_qparams(state, key, x)
            return _qlinear(_quantize(x, scale, zero), scale, zero, int8, dtype, act, residual)
    if dtype == torch.float32 and weights is None:
        w, b = layer.weight, layer.bias
    else:
        w, b = _cast(state, key, *(weights or _layer_weights(layer)), dtype)
    if (dtype == torch.float32 and act != "gelu" and x.numel() <= mkl_rows() * x.shape[-1]
            and not torch.is_autocast_enabled("cpu")):  # (CPU autocast would run addmm in bfloat16)
        return _mkl_linear(x, w, b, act, residual)
    return _fused_linear(x, w, b, act, residual)


MKL_ROWS = 4096
"""float32 products of at most this many rows (token rows of a piece: stages 3 and 4 at 224 px and batch
8, every stage at batch 1) run on MKL's GEMM where :func:`mkl_rows` says so: on a Zen 3 (AVX2) oneDNN's
``brg_matmul`` took 20-30 % longer than MKL's ``addmm`` on the late stages' shapes (K or N of 320-2048),
more than the bias / ReLU / residual pass it fuses; on stage 1 and 2 at batch 8 the fused pass wins, and
at batch 1 every stage through MKL gave 1-2 % more than only stages 2-4 (docs/speed.md, "The deployment
merge's float32 cost" and "Batch 1")."""


@functools.lru_cache(maxsize=1)
def mkl_rows() -> int:
    """The row bound of the MKL route (:data:`MKL_ROWS`) where it was measured to pay: ATen dispatching
    to AVX2 (no AVX-512) and MKL present; 0 (never) elsewhere."""
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
    return MKL_ROWS if avx2 and torch.backends.mkl.is_available() else 0


def _mkl_linear(x: Tensor, w: Tensor, b: Tensor | None, act: str = "none", residual: Tensor | None = None) -> Tensor:
    """What :func:`_fused_linear` computes, as ATen's ``addmm`` (MKL's GEMM) with the bias, ReLU or
    residual applied after it, in place (GELU products stay on oneDNN: one pass over the wide output)."""
    rows = x.reshape(-1, x.shape[-1])
    if residual is not None:
        out = torch.addmm(residual.reshape(-1, w.shape[0]), rows, w.t())
        if b is not None:
            out.add_(b)
    else:
        out = rows @ w.t() if b is None else torch.addmm(b, rows, w.t())
        if act == "relu":
            out.relu_()
    return out.reshape(*x.shape[:-1], w.shape[0])


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


def _conv_weights(state: OpsState, key: str, conv: nn.Conv2d, dtype: torch.dtype) -> WeightPair:
    """``conv``'s weight in channels-last order and ``dtype``, and its bias in ``dtype`` (cached: spares
    oneDNN a reorder of the weight on every call)."""
    w, b = conv.weight, conv.bias

    def make() -> WeightPair:
        weight = w.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        return weight, None if b is None else b.detach().to(dtype)

    return state.weight_cache.get((key, dtype), (w, b), make)


_PACKED_SHAPES = 8
"""Input shapes per convolution whose packed weights are kept (a model fed many sizes repacks, no more)."""


def _packed_conv_weight(state: OpsState, key: str, conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv``'s float32 weight reordered into the oneDNN layout its convolution picks for inputs of
    ``x``'s shape (an opaque oneDNN tensor for :func:`_fused_conv`), made once per input shape and kept
    until the weight changes. A weight packed for another shape still computes the same values, but may
    run a slower kernel, hence one per shape."""
    packs: dict[torch.Size, Tensor] = state.weight_cache.get((key, "packed"), (conv.weight,), dict)
    packed = packs.get(x.shape)
    if packed is None:
        if len(packs) >= _PACKED_SHAPES:
            packs.clear()
        packed = packs[x.shape] = torch.ops.aten.mkldnn_reorder_conv2d_weight(
            conv.weight.detach().float().to_mkldnn(), conv.padding, conv.stride, conv.dilation, conv.groups, x.shape
        )
    return packed


@functools.lru_cache(maxsize=None)
def _packing_runs() -> bool:
    """Whether this PyTorch's oneDNN convolution takes a packed weight (:func:`_packed_conv_weight`)."""
    try:
        with torch.inference_mode():
            x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
            w = torch.randn(8, 4, 2, 2)
            packed = torch.ops.aten.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), [0, 0], [2, 2], [1, 1], 1, x.shape)
            out = _fused_conv(x, packed, None, [0, 0], [2, 2], [1, 1], 1)
            return bool(torch.allclose(out, F.conv2d(x, w, None, 2), atol=1e-4))
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AttributeError):
        return False


def _fused_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding, stride, dilation, groups: int) -> Tensor:
    """oneDNN's ``conv2d(x)`` (``weight`` dense or packed by :func:`_packed_conv_weight`)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "none", [], "")


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


def _fusable(act: nn.Module | None) -> str | None:
    """oneDNN's name of the activation ``act`` when a fused kernel can compute it (ReLU, exact GELU)."""
    if type(act) is nn.ReLU:
        return "relu"
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    return None


# -------------------------------------------------------------------------------- operations
class CpuOps(Ops):
    """The operations of :class:`~pvt.layers.Ops` on the CPU path, for one accelerated module, computing
    in ``dtype`` (float32 or bfloat16; int8 products where the record says so). The dataflow that calls
    them is the plain modules' own (:mod:`pvt.layers`); these read the layers' parameters and skip
    their ``__call__`` (no hooks, no dropout: :mod:`pvt.accel.modules` only picks them for inference
    without hooks). ``autocast``: they run inside CPU autocast, which they turn off around their kernels."""

    def __init__(self, state: OpsState, dtype: torch.dtype, autocast: bool = False, adding: Tensor | None = None):
        self.state, self.dtype, self.autocast = state, dtype, autocast
        self.adding = adding
        """Inside a residual branch: the residual its output projection adds in the same pass."""

    def _off(self):
        """CPU autocast off around a kernel that picks its own dtypes (a no-op context outside autocast)."""
        return torch.autocast("cpu", enabled=False) if self.autocast else nullcontext()

    def norm(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        with self._off():
            return norm(x if x.dtype == self.dtype else x.to(self.dtype))

    def linear(self, layer: nn.Linear, x: Tensor, *acts: nn.Module | None) -> Tensor:
        acts = tuple(a for a in acts if a is not None)
        fused = _fusable(acts[0]) if acts else None
        x = _linear(self.state, self.state.names[layer], self.dtype, x.contiguous(), layer, fused or "none")
        for act in acts[1:] if fused else acts:
            x = act(x)
        return x

    def conv(self, conv: nn.Conv2d, x: Tensor, act: nn.Module | None = None) -> Tensor:
        """``act(conv(x))`` on channels-last maps with channels-last weights; GELU fused into the convolution."""
        key, x = self.state.names[conv], x.to(self.dtype)
        with self._off():
            if _fusable(act) == "gelu":
                if self.dtype == torch.float32:
                    weight, bias = conv.weight, conv.bias
                else:
                    weight, bias = _conv_weights(self.state, key, conv, self.dtype)
                return _fused_conv_gelu(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
            if self.dtype == torch.float32 and conv.padding_mode == "zeros" and type(conv.padding) is not str \
                    and _packing_runs():
                weight = _packed_conv_weight(self.state, key, conv, x)
                x = _fused_conv(x, weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)
            else:
                weight, bias = _conv_weights(self.state, key, conv, self.dtype)
                x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return x if act is None else act(x)

    def q_kv(self, attn: SpatialReductionAttention, x: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
        if source is not x:
            return self.linear(attn.q, x), self.linear(attn.kv, source)
        # keys from the tokens themselves: one product for q, k and v
        key = self.state.names[attn] + ".qkv"
        qkv = _linear(self.state, key, self.dtype, x.contiguous(), weights=_stacked_qkv(attn))
        c = x.shape[-1]
        return qkv[..., :c], qkv[..., c:]

    def output(self, layer: nn.Linear, x: Tensor) -> Tensor:
        if self.adding is None:
            return self.linear(layer, x)
        return _linear(self.state, self.state.names[layer], self.dtype, x.contiguous(), layer, residual=self.adding)

    def residual(self, x: Tensor, branch: nn.Module, y: Tensor, h: int, w: int, drop_path: nn.Module) -> Tensor:
        # inference: drop path is the identity, and the add runs in the branch's output projection
        x = x if x.dtype == self.dtype else x.to(self.dtype)
        return branch(y, h, w, ops=CpuOps(self.state, self.dtype, self.autocast, adding=x))
