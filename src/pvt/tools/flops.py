"""Count FLOPs the way the PVT papers did.

The convention (the official ``get_flops.py``: mmcv's ``get_model_complexity_info`` plus the attention
products): one multiply-add is one FLOP, counted per module with forward hooks:

* convolutions: ``output elements x (C_in / groups) x k_h x k_w``, plus one per output element for
  the bias; transposed convolutions likewise per input element;
* linear layers: ``input elements x output features`` (bias not counted);
* BatchNorm / GroupNorm / LayerNorm / InstanceNorm: one per input element, two when affine;
* ReLU, ReLU6, PReLU, ELU, LeakyReLU: one per output element (GELU only with ``gelu=True``: mmcv
  has no rule for it); pooling: one per input element; ``nn.Upsample``: one per output element;

plus the two attention products ``Q K^T`` and ``A V``: ``2 x N x N' x C`` per attention layer
(``N`` query tokens, ``N'`` key/value tokens after spatial reduction), counted at the attention module
(:class:`~pvt.layers.SpatialReductionAttention`, :class:`torch.nn.MultiheadAttention`, whose input and
output projections are counted there too), so that a fused ``F.scaled_dot_product_attention`` is
never missed. Functional calls (``F.interpolate``, additions, softmax) are not counted.

This one convention reproduces every GFLOPs figure of PVT v2's Table 2, v1 rows included, to the
printed digit (see ``docs/paper_tables.md``); without the attention products the v1 rows fall
short by up to 0.26 GFLOPs.

Modules the paper's counter could not see. The Table 4 detectors were counted with mmcv 1.3, which
has no rule for ``SyncBatchNorm`` (the Cascade Mask R-CNN box heads' norm; built here as
``BatchNorm2d`` so that one process trains) nor for ``nn.MultiheadAttention`` (Sparse R-CNN's
self-attention). A builder marks such a module with :func:`mark_uncounted`; :func:`count_flops`
leaves it and everything under it out (``uncounted=False`` counts it like any module of its type).
No model of Tables 2, 3, 5, 6 or Figure 4 carries a mark, so their figures are unaffected.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..base.marks import UNCOUNTED, mark_uncounted

__all__ = [
    "ATTENTION",
    "FIGURE4_MODELS",
    "FIGURE4_SIZES",
    "FlopReport",
    "attention_macs",
    "complexity_curve",
    "count_flops",
    "mark_uncounted",
    "paper_convention_gflops",
    "reference_model",
    "variant_flops",
]

ATTENTION = "attention matmuls"
"""Key of the attention products (``Q K^T`` and ``A V``) in :attr:`FlopReport.by_type`."""


@dataclass(frozen=True)
class FlopReport:
    """FLOPs (multiply-adds) of one forward pass.

    ``module_flops``: the per-module count (convolutions, linear layers, norms, activations,
    pooling, the projections of ``nn.MultiheadAttention``); ``attention_flops``: the ``Q K^T`` and
    ``A V`` products. ``flops`` adds the latter only when ``attention_included``.
    """

    input_size: tuple[int, int]
    batch: int
    params: int
    module_flops: int
    attention_flops: int
    attention_included: bool = True
    by_type: dict[str, int] = field(default_factory=dict)
    """FLOPs per module type (``"Conv2d"``, ``"Linear"``, ...) and ``"attention matmuls"``."""
    by_module: dict[str, int] = field(default_factory=dict)
    """FLOPs per counted module by qualified name; attention products as ``"<attn>.attention matmuls"``."""

    @property
    def flops(self) -> int:
        return self.module_flops + (self.attention_flops if self.attention_included else 0)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def grouped(self, depth: int = 2) -> dict[str, int]:
        """FLOPs summed over module names cut to their first ``depth`` parts (``"stages.0"``)."""
        out: dict[str, int] = {}
        for name, value in self.by_module.items():
            if not self.attention_included and name.split(".")[-1] == ATTENTION:
                continue
            key = ".".join(name.split(".")[:depth])
            out[key] = out.get(key, 0) + value
        return out

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-module detail)."""
        return {
            "input_size": list(self.input_size),
            "batch": self.batch,
            "params": self.params,
            "gflops": self.gflops,
            "flops": self.flops,
            "module_flops": self.module_flops,
            "attention_flops": self.attention_flops,
            "attention_included": self.attention_included,
            "by_type": dict(self.by_type),
        }


# ----------------------------------------------------------------------------- per-module rules
# Each rule maps (module, inputs, output) to module FLOPs, or to (module FLOPs, attention FLOPs).


def _conv(m: nn.Module, inputs: tuple, out: Tensor) -> int:
    per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return out.numel() * per_output + (out.numel() if m.bias is not None else 0)


def _conv_transpose(m: nn.Module, inputs: tuple, out: Tensor) -> int:
    per_input = (m.out_channels // m.groups) * math.prod(m.kernel_size)
    return inputs[0].numel() * per_input + (out.numel() if m.bias is not None else 0)


def _linear(m: nn.Module, inputs: tuple, out: Tensor) -> int:
    return inputs[0].numel() * out.shape[-1]


def _norm(m: nn.Module, inputs: tuple, out: Tensor) -> int:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return inputs[0].numel() * (2 if affine else 1)


def _per_output(m: nn.Module, inputs: tuple, out: Tensor) -> int:
    return out.numel()


def _per_input(m: nn.Module, inputs: tuple, out: Tensor) -> int:
    return inputs[0].numel()


def attention_macs(queries: int, keys: int, dim: int, batch: int = 1) -> int:
    """Multiply-adds of ``Q K^T`` plus ``A V`` over all heads: ``2 x batch x queries x keys x dim``."""
    return 2 * batch * queries * keys * dim


def _sra(m: nn.Module, inputs: tuple, out: Tensor) -> tuple[int, int]:
    """``SpatialReductionAttention(x, h, w)``: its q/kv/proj/sr/norm have their own hooks."""
    x, h, w = inputs[0], int(inputs[1]), int(inputs[2])
    b, n, c = x.shape
    keys = n if m.sr is None else m.reduced_tokens(h, w)
    return 0, attention_macs(n, keys, c, b)


def _mha(m: nn.MultiheadAttention, inputs: tuple, out: object) -> tuple[int, int]:
    """``nn.MultiheadAttention(query, key, value)``: it calls no submodule, so count all here."""
    q, k = inputs[0], inputs[1]
    seq_dim = -2 if (m.batch_first or q.dim() == 2) else 0
    lq, lk, e = q.shape[seq_dim], k.shape[seq_dim], m.embed_dim
    b = q.numel() // (lq * e)
    projections = b * (lq * e * e + lk * m.kdim * e + lk * m.vdim * e + lq * e * e)
    return projections, attention_macs(lq, lk, e, b)


_Rule = Callable[..., "int | tuple[int, int]"]
_POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_RELUS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)


def _rules(gelu: bool) -> list[tuple[type | tuple[type, ...], _Rule]]:
    from ..layers import SpatialReductionAttention

    return [
        (nn.modules.conv._ConvTransposeNd, _conv_transpose),
        (nn.modules.conv._ConvNd, _conv),
        (nn.Linear, _linear),
        ((nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm), _norm),
        (_RELUS + ((nn.GELU,) if gelu else ()), _per_output),
        (_POOLS, _per_input),
        (nn.Upsample, _per_output),
        (SpatialReductionAttention, _sra),
        (nn.MultiheadAttention, _mha),
    ]


# ----------------------------------------------------------------------------- running the model
def _size2(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        size: tuple[int, ...] = (input_size, input_size)
    elif isinstance(input_size, (str, bytes)):
        raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}")
    else:
        try:
            size = tuple(int(s) for s in input_size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}") from None
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    return size  # type: ignore[return-value]


def _in_chans(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "in_chans"):
        return int(cfg.in_chans)
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    return 3


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with every parameter and buffer empty on ``meta`` (no data)."""
    memo: dict[int, object] = {id(b): torch.empty_like(b, device="meta") for b in model.buffers()}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    return copy.deepcopy(model, memo)


def _shape_only(model: nn.Module) -> list[nn.Module]:
    """Give shape-preserving leaves (norms, activations, dropout) and linear layers a shape-only
    forward (an instance attribute; ``del m.forward`` restores the class's): on ``meta`` their kernels
    cost milliseconds each, and only the shapes matter here. Hooks still fire with the right shapes.
    Subclasses with a forward of their own are left alone. Returns the modules changed."""
    same = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Dropout, nn.GELU, nn.Identity) + _RELUS
    stock = {c.forward for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, *same)}
    changed = []
    for m in model.modules():
        if "forward" in vars(m):
            continue
        if isinstance(m, same) and type(m).forward in stock:
            m.forward = _identity  # type: ignore[method-assign]
        elif isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            m.forward = _linear_shape(m.out_features)  # type: ignore[method-assign]
        else:
            continue
        changed.append(m)
    return changed


def _identity(x: Tensor, *args: object, **kwargs: object) -> Tensor:
    return x


def _linear_shape(out_features: int) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        return x.new_empty(*x.shape[:-1], out_features)

    return forward


def _run(model: nn.Module, call: Callable[[nn.Module], object], rules,
         uncounted: bool = True) -> tuple[dict, dict, int, int]:
    by_type: dict[str, int] = {}
    by_module: dict[str, int] = {}
    totals = [0, 0]

    def make_hook(name: str, rule: _Rule):
        def hook(module: nn.Module, inputs: tuple, out: object) -> None:
            res = rule(module, inputs, out)
            mod, attn = res if isinstance(res, tuple) else (res, 0)
            if mod:
                kind = type(module).__name__
                by_type[kind] = by_type.get(kind, 0) + mod
                by_module[name] = by_module.get(name, 0) + mod
                totals[0] += mod
            if attn:
                key = f"{name}.{ATTENTION}" if name else ATTENTION
                by_type[ATTENTION] = by_type.get(ATTENTION, 0) + attn
                by_module[key] = by_module.get(key, 0) + attn
                totals[1] += attn

        return hook

    handles = []
    skipped: list[str] = []  # names of marked modules: they and their children are left out
    for name, module in model.named_modules():
        if uncounted and (getattr(module, UNCOUNTED, None) is not None
                          or any(name.startswith(s + ".") for s in skipped)):
            skipped.append(name)
            continue
        for kinds, rule in rules:
            if isinstance(module, kinds):
                handles.append(module.register_forward_hook(make_hook(name, rule)))
                break
    # the hooks themselves keep an accelerated model (pvt.accel) on its plain path, which calls every layer
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            call(model)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return by_type, by_module, totals[0], totals[1]


def count_flops(
    model: nn.Module,
    input_size: int | Sequence[int] = 224,
    *,
    attention: bool = True,
    batch: int = 1,
    in_chans: int | None = None,
    gelu: bool = False,
    method: str | None = None,
    device: str | torch.device | None = None,
    uncounted: bool = True,
) -> FlopReport:
    """FLOPs (multiply-adds) of ``model`` on one ``(batch, in_chans, H, W)`` input.

    Args:
        model: any ``nn.Module`` taking one NCHW tensor: a PVT, a torchvision ResNet or
            VisionTransformer, a dense-prediction model (see ``method``).
        input_size: ``H`` (square) or ``(H, W)``.
        attention: add the attention products ``Q K^T`` and ``A V`` (the papers' convention, and the
            complete count). ``False``: what a module-hook counter alone reports for a fused kernel.
        batch: batch size (FLOPs scale linearly with it).
        in_chans: input channels (default: the model's config, else its first convolution's).
        gelu: also count one FLOP per GELU output (mmcv, hence the papers, count none).
        method: call ``model.<method>(x)`` instead of ``model(x)``, e.g. ``"forward_dummy"`` for the
            detectors of :mod:`pvt.tasks` (backbone, neck and dense head).
        device: where to run. Default: shapes only, on a parameter-free ``meta`` copy of the model
            (fast at any input size, leaves ``model`` untouched), falling back to the model's own
            device when some layer cannot run on ``meta``. A device name forces a real forward pass.
        uncounted: leave out the modules marked with :func:`mark_uncounted` (the paper's counter
            could not see them; see the module docstring). ``False``: count them too.

    Returns:
        A :class:`FlopReport`; ``report.gflops`` is the total in GFLOPs.
    """
    h, w = _size2(input_size)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if method is not None and not callable(getattr(model, method, None)):
        raise ValueError(f"{type(model).__name__} has no method {method!r} to count")
    chans = _in_chans(model) if in_chans is None else in_chans
    rules = _rules(gelu)

    def call_on(x: Tensor) -> Callable[[nn.Module], object]:
        return lambda m: getattr(m, method)(x) if method else m(x)

    result = None
    if device is None or str(device) == "meta":
        on_meta = all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
        target = model if on_meta else None
        changed: list[nn.Module] = []
        try:
            target = model if on_meta else _meta_copy(model)
            changed = _shape_only(target)
            result = _run(target, call_on(torch.empty(batch, chans, h, w, device="meta")), rules, uncounted)
        except ValueError:
            raise  # the model rejected the input (too small, wrong channels): a real run would too
        except Exception:
            if device is not None:
                raise
        finally:
            if target is model:  # a meta model is counted in place: give its modules back their forward
                for m in changed:
                    del m.forward
    if result is None:  # a real forward pass on the model's own device
        ref = next(iter(model.parameters()), None)
        dev = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        result = _run(model, call_on(torch.zeros(batch, chans, h, w, device=dev, dtype=dtype)), rules, uncounted)
    by_type, by_module, module_flops, attention_flops = result
    return FlopReport(
        input_size=(h, w),
        batch=batch,
        params=sum(p.numel() for p in model.parameters()),
        module_flops=module_flops,
        attention_flops=attention_flops,
        attention_included=attention,
        by_type=by_type,
        by_module=by_module,
    )


# ----------------------------------------------------------------------------- registered variants
def variant_flops(name: str, input_size: int | Sequence[int] = 224, *, attention: bool = True) -> FlopReport:
    """:func:`count_flops` of the registered variant ``name`` (1000-class head), built on ``meta``:
    no weights are allocated, so any variant at any size counts in about a second (results are
    cached per process)."""
    report = _variant_report(name, _size2(input_size))
    return dataclasses.replace(
        report, attention_included=attention, by_type=dict(report.by_type), by_module=dict(report.by_module)
    )


@functools.lru_cache(maxsize=64)
def _variant_report(name: str, size: tuple[int, int]) -> FlopReport:
    from ..models.registry import create_model

    with torch.device("meta"):
        model = create_model(name)
    return count_flops(model, size)


def paper_convention_gflops(name: str, input_size: int | Sequence[int] = 224) -> float:
    """GFLOPs of variant ``name`` as both PVT papers count them: module count plus attention products.

    (The official ``get_flops.py`` adds ``2 h w h' w' C`` per block to mmcv's module count, for
    PVT v1 and v2 backbones alike; this count reproduces every row of v2's Table 2.)
    """
    return variant_flops(name, input_size, attention=True).gflops


# ----------------------------------------------------------------------------- Figure 4 of PVT v2
FIGURE4_SIZES: tuple[int, ...] = (224, *range(256, 1281, 128))
"""Square input sides of the default complexity curve: 224, 256, 384, ..., 1280."""

FIGURE4_MODELS: dict[str, str] = {
    "vit_small_patch16": "ViT-Small/16",
    "vit_small_patch32": "ViT-Small/32",
    "pvt_v1_small": "PVTv1-Small",
    "resnet50": "ResNet-50",
    "pvt_v2_b2": "PVTv2-B2",
    "pvt_v2_b2_li": "PVTv2-B2-Li",
}
"""The models of the PVT v2 paper's Figure 4 (plus PVTv2-B2), by key, with their plot labels."""


def reference_model(name: str, input_size: int = 224) -> nn.Module:
    """A Figure 4 model on ``meta`` (no weights): a PVT variant, torchvision's ResNet-50, or a
    ViT-Small (torchvision ``VisionTransformer``: hidden 384, 12 layers, 6 heads, MLP 1536) with
    patch 16 or 32 built for ``input_size`` (rounded down to a multiple of the patch, which leaves
    its FLOPs unchanged: the patch convolution drops the remainder)."""
    import torchvision

    with torch.device("meta"):
        if name == "resnet50":
            return torchvision.models.resnet50(weights=None)
        if name.startswith("vit_small_patch"):
            patch = int(name.removeprefix("vit_small_patch"))
            side = max(patch, input_size // patch * patch)
            return torchvision.models.VisionTransformer(
                image_size=side, patch_size=patch, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536
            )
        from ..models.registry import create_model
        from ..models.variants import VARIANTS

        if name in VARIANTS:
            return create_model(name)
    choices = ", ".join([*FIGURE4_MODELS, "or any PVT variant"])
    raise ValueError(f"unknown reference model {name!r}; choose from {choices}")


def complexity_curve(name: str, sizes: Sequence[int] = FIGURE4_SIZES) -> list[FlopReport]:
    """:func:`count_flops` of reference model ``name`` at each square input side in ``sizes``."""
    fixed = None if name.startswith("vit_") else reference_model(name)
    return [count_flops(fixed if fixed is not None else reference_model(name, s), s) for s in sizes]
