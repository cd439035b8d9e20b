"""Putting a checkpoint into a model: ``create_pretrained`` (build + load) and ``load_checkpoint``.

Rules:

* The head follows the checkpoint unless the caller asks for another ``num_classes``: then the
  checkpoint's head is dropped and a fresh one is made, with a warning (no warning for
  ``num_classes=0``, a backbone). A headless checkpoint (``PvtV2Model``, a backbone) gives a
  headless model, or a fresh head with a warning when ``num_classes > 0`` is asked for.
* v1 position embeddings laid out for another input size are resized (bilinear, as the model
  itself does at run time) to the model's ``img_size``.
* A dense-prediction checkpoint gives its backbone (see :mod:`pvt.weights.files`), with a note.
* A v1 backbone without a class token (the official detection / segmentation v1 backbones) is
  loaded into a v1 model built with ``cls_token=False``: the unused class slot of its last position
  embedding is dropped, and the model has no final LayerNorm where the file has none (``final_norm=False``).
* A 3-channel first patch embedding loaded into a model with another ``in_chans`` is adapted as
  timm's ``adapt_input_conv`` does (1 channel: the sum over RGB; N: RGB repeated cyclically, scaled
  by 3/N), with a note.
* A file that records no config takes the LayerNorm eps its format's own models use (HF and
  OpenMMLab layouts: 1e-6 everywhere; see :attr:`pvt.weights.keys.Layout.norm_eps`).
* Any other missing, unexpected or mis-shaped tensor is a :class:`ValueError` that lists them and,
  when the shapes fit another registered variant, names it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.config import PVTConfig
from ..models.model import PyramidVisionTransformer
from ..models.variants import Variant, get_variant
from .files import Checkpoint, read_checkpoint
from .hub import resolve_source
from .keys import LAYOUTS, StateDict
from .preprocessing import Preprocessing
from .shapes import describe_architecture, infer_architecture, matching_variants

__all__ = [
    "LoadReport",
    "adapt_input_conv",
    "MAX_LISTED",
    "check_state_dict",
    "create_pretrained",
    "drop_class_slots",
    "infer_variant",
    "load_checkpoint",
    "resize_pos_embeds",
]

MAX_LISTED = 10
"""Keys listed per category in an error message before "... and N more"."""

_HEAD = ("head.weight", "head.bias")
# fields a self-describing checkpoint carries into the model it is loaded into
_CARRIED = ("layer_norm_eps", "embed_norm_eps", "img_size", "pool_size", "qkv_bias")
# everything but the head size, the input channels (the caller's decide) and the training-time rates
_ARCHITECTURE = tuple(
    sorted(PVTConfig.field_names() - {"num_classes", "in_chans", "drop_rate", "attn_drop_rate", "drop_path_rate"})
)


@dataclass
class LoadReport:
    """What did not fit when loading (all empty after a successful strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """``(key, shape in the file, shape in the model)``."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _listing(title: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"; {title} ({len(items)}): {', '.join(shown)}{more}"


def check_state_dict(model_sd: dict[str, Tensor], sd: StateDict) -> LoadReport:
    """Compare a checkpoint (this library's names) with a model's state dict."""
    report = LoadReport()
    report.missing = [k for k in model_sd if k not in sd]
    report.unexpected = [k for k in sd if k not in model_sd]
    report.mismatched = [
        (k, tuple(sd[k].shape), tuple(v.shape)) for k, v in model_sd.items() if k in sd and sd[k].shape != v.shape
    ]
    return report


_EPS = ("layer_norm_eps", "embed_norm_eps")


def _file_eps(ckpt: Checkpoint) -> dict[str, float]:
    """The LayerNorm eps the checkpoint's model was made with, where known: its own config's, else the
    one eps of its format's models (HF, OpenMMLab); empty for the official values."""
    if ckpt.config is not None:
        return {f: getattr(ckpt.config, f) for f in _EPS}
    layout = LAYOUTS.get(ckpt.format)
    return {} if layout is None or layout.norm_eps is None else dict.fromkeys(_EPS, layout.norm_eps)


def _guess(ckpt: Checkpoint) -> tuple[list[str], str]:
    arch = infer_architecture(ckpt.state_dict)
    if arch is None:
        if "stages.0.patch_embed.proj.weight" in ckpt.state_dict:
            return [], "tensors of ranks no PVT has, e.g. a patch embedding that is not a 4-D convolution weight"
        return [], "no PVT patch embedding"
    # a v1 backbone without its class token (official dense-prediction v1) is still that v1 variant
    like = {**arch, "cls_token": True} if arch["pos_embed"] and not arch["cls_token"] else arch
    return matching_variants(like), describe_architecture(arch)


def _note(msg: str, stacklevel: int) -> None:
    warnings.warn(msg, stacklevel=stacklevel + 1)


_FIRST_CONV = "stages.0.patch_embed.proj.weight"


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A 3-channel (RGB) convolution weight ``(O, 3, k, k)`` made to take ``in_chans`` channels.

    ``in_chans=1``: the sum over the RGB channels, so a grey image gives what the RGB model gives on
    that image replicated three times. Other counts: the RGB weights repeated cyclically
    (R, G, B, R, ...) and scaled by ``3 / in_chans``, which keeps the output's scale. The same rule
    as timm's ``adapt_input_conv``; computed in float32, returned in the weight's dtype.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"adapt_input_conv needs a (O, 3, kH, kW) weight, got shape {tuple(weight.shape)}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    w = weight.float()
    if in_chans == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        out = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    return out.to(weight.dtype)


def _adapt_input_channels(sd: StateDict, model_sd: dict[str, Tensor], source: str) -> tuple[StateDict, list[str]]:
    """Adapt a 3-channel first patch embedding to the model's input channels (nothing else)."""
    w, ref = sd.get(_FIRST_CONV), model_sd.get(_FIRST_CONV)
    if w is None or ref is None or w.ndim != 4 or ref.ndim != 4 or w.shape[1] != 3 or ref.shape[1] == 3:
        return sd, []
    if (w.shape[0], *w.shape[2:]) != (ref.shape[0], *ref.shape[2:]):
        return sd, []  # another architecture: the shape check reports it
    n = int(ref.shape[1])
    how = "summed over R, G, B" if n == 1 else f"RGB repeated cyclically and scaled by 3/{n}"
    return {**sd, _FIRST_CONV: adapt_input_conv(w, n)}, [
        f"checkpoint {source}: the 3-channel first patch embedding was adapted to in_chans={n} ({how})"
    ]


def _lacks_class_token(sd: StateDict) -> bool:
    """A v1 layout (position embeddings) whose file has no class token."""
    return any(k.endswith(".pos_embed") for k in sd) and not any(k.endswith(".cls_token") for k in sd)


def drop_class_slots(sd: StateDict, model: nn.Module) -> StateDict:
    """Drop the unused class-token slot from position embeddings of ``(1, 1 + s*s, C)`` where the
    model's stage has no class token and the file none either (the official dense v1 backbones keep
    the slot in their last stage and skip it at run time)."""
    if any(k.endswith(".cls_token") for k in sd):
        return sd
    out = dict(sd)
    for i, stage in enumerate(getattr(model, "stages", [])):
        key = f"stages.{i}.pos_embed"
        v = sd.get(key)
        if v is None or getattr(stage, "num_prefix", 1) != 0 or v.ndim != 3:
            continue
        n = v.shape[1]
        if n > 1 and math.isqrt(n - 1) ** 2 == n - 1 and math.isqrt(n) ** 2 != n:
            out[key] = v[:, 1:]
    return out


def _mismatch_error(ckpt: Checkpoint, target: str, report: LoadReport) -> ValueError:
    names, described = _guess(ckpt)
    if names and target not in names:
        verdict = f": it looks like {' / '.join(names)}, not {target}"
    elif not names:
        verdict = f": its shapes ({described}) match no registered variant"
    else:
        verdict = ""
    msg = f"checkpoint {ckpt.source} ({ckpt.format_description}) does not fit {target}{verdict}"
    if report.missing:
        msg += _listing("missing keys", report.missing)
    if report.unexpected:
        msg += _listing("unexpected keys", report.unexpected)
    if report.mismatched:
        shapes = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in report.mismatched]
        msg += _listing("mis-shaped keys", shapes)
    return ValueError(msg)


def _head_classes(sd: StateDict) -> int:
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else 0


def _check_heads(ckpt: Checkpoint, cfg: PVTConfig, target: str) -> None:
    """A self-describing checkpoint must agree on the one thing weights cannot show: the heads."""
    if ckpt.config is not None and tuple(ckpt.config.num_heads) != tuple(cfg.num_heads):
        raise ValueError(
            f"checkpoint {ckpt.source} was made with num_heads {ckpt.config.num_heads}, but {target} "
            f"has {cfg.num_heads}; pass num_heads={list(ckpt.config.num_heads)} to use it"
        )


def infer_variant(ckpt: Checkpoint) -> str:
    """The registered variant a checkpoint holds: the name it records, else the one its shapes fit."""
    from ..models.variants import VARIANTS

    if ckpt.variant in VARIANTS:
        return ckpt.variant  # type: ignore[return-value]
    names, described = _guess(ckpt)
    if len(names) == 1:
        return names[0]
    raise ValueError(
        f"cannot tell which variant {ckpt.source} holds ({described}"
        + (f"; it fits {', '.join(names)}" if names else "; no registered variant has these shapes")
        + "): name one, e.g. --model pvt_v2_b2"
    )


def resize_pos_embeds(sd: StateDict, model: nn.Module) -> StateDict:
    """Resize square v1 position embeddings in ``sd`` to the grids of ``model``'s stages.

    ``(1, prefix + s*s, C) -> (1, prefix + h*w, C)``; the class-token slot is kept as it is. Tensors
    that are not square grids of the same width are left for the shape check to report.
    """
    out = dict(sd)
    for i, stage in enumerate(getattr(model, "stages", [])):
        key, pe = f"stages.{i}.pos_embed", getattr(stage, "pos_embed", None)
        v = sd.get(key)
        if pe is None or v is None or v.shape == pe.shape or v.ndim != 3 or v.shape[0] != 1 or v.shape[2] != pe.shape[2]:
            continue
        prefix = stage.num_prefix
        side = math.isqrt(v.shape[1] - prefix)
        if side * side != v.shape[1] - prefix:
            continue
        grid = v[:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=stage.grid, mode="bilinear", align_corners=False)
        out[key] = torch.cat([v[:, :prefix], grid.flatten(2).transpose(1, 2).to(v.dtype)], dim=1)
    return out


def _assign(model: nn.Module, sd: StateDict) -> None:
    """Load ``sd`` into a model built on the meta device, as float tensors of the model's dtype."""
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) if v.dtype != ref[k].dtype else v for k, v in sd.items()},
                          strict=False, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if [n for n in left if n not in _HEAD]:
        raise RuntimeError(f"internal error: tensors left uninitialised after loading: {left}")


def create_pretrained(
    variant: Variant | str | None,
    source: str | Path | Checkpoint,
    *,
    num_classes: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> PyramidVisionTransformer:
    """Build ``variant`` and load the checkpoint at ``source`` (file, folder, ``hf-hub:<repo>`` or an
    already read :class:`Checkpoint`). ``variant=None``: the variant the checkpoint holds.

    ``num_classes=None`` keeps the checkpoint's head size; ``overrides`` are :class:`PVTConfig`
    fields (they win over what the checkpoint's own config says).
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(resolve_source(source))
    if variant is None:
        variant = infer_variant(ckpt)
    variant = get_variant(variant) if isinstance(variant, str) else variant
    overrides = dict(overrides or {})
    overrides.pop("num_classes", None)
    cfg = variant.config
    if ckpt.config is not None:
        # a file that records this very variant describes it fully (e.g. an ablation built with
        # overrides); otherwise only numerics the weights cannot show are taken over
        fields = _ARCHITECTURE if ckpt.variant == variant.name else _CARRIED
        cfg = cfg.replace(**{f: getattr(ckpt.config, f) for f in fields})
    cfg = cfg.replace(**{**_file_eps(ckpt), **overrides})
    _check_heads(ckpt, cfg, variant.name)

    sd = dict(ckpt.state_dict)
    notes = list(ckpt.notes)
    no_cls = cfg.cls_token and _lacks_class_token(sd)
    if no_cls:  # official dense-prediction v1 backbone: no class token, no final LayerNorm
        every = all(f"stages.{i}.norm.weight" in sd for i in range(cfg.num_stages))
        final = f"stages.{cfg.num_stages - 1}.norm.weight" in sd
        cfg = cfg.replace(cls_token=False, stage_norms=every, final_norm=final)
    file_classes = _head_classes(sd)
    want = file_classes if num_classes is None else num_classes
    cfg = cfg.replace(num_classes=want)
    fresh_head = want != file_classes
    if fresh_head:
        for k in _HEAD:
            sd.pop(k, None)
    # built without initialising (the checkpoint overwrites every tensor); the head, if fresh, after
    with torch.device("meta"):
        model = PyramidVisionTransformer(cfg)
    if no_cls:
        notes.append(
            f"checkpoint {ckpt.source} holds a PVT v1 backbone without a class token (as the official detection "
            "and segmentation backbones): the model is built with cls_token=False and the unused class slot of "
            "its last position embedding is dropped"
            + ("" if cfg.final_norm else "; like theirs, it has no final LayerNorm (final_norm=False)")
        )
    model_sd = model.state_dict()
    sd, adapted = _adapt_input_channels(sd, model_sd, ckpt.source)
    notes += adapted
    sd = resize_pos_embeds(drop_class_slots(sd, model), model)
    report = check_state_dict(model_sd, sd)
    if fresh_head:
        report.missing = [k for k in report.missing if k not in _HEAD]
    if not report.ok:
        raise _mismatch_error(ckpt, variant.name, report)
    _assign(model, sd)
    if fresh_head:
        model.reset_classifier(want)
    model.variant_name = variant.name
    # the evaluation transform a pvt train file records (timm's resolve_data_config(model=...) reads it); a size
    # asked for in overrides wins over the file's
    Preprocessing.of(model.config, {k: v for k, v in ckpt.extra.items() if k != "img_size" or k not in overrides}
                     ).apply_to(model)
    for msg in notes:
        _note(msg, stacklevel=3)
    if fresh_head and want > 0:
        had = f"its {file_classes}-class head was dropped" if file_classes else "it has no classifier head"
        warnings.warn(
            f"checkpoint {ckpt.source}: {had}; the model's {want}-class head is freshly initialised "
            "(train it before use)",
            stacklevel=3,
        )
    return model


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a checkpoint in any supported format into an existing ``model``.

    ``strict=True``: every tensor must fit exactly, else a :class:`ValueError` lists what does not.
    ``strict=False``: load every tensor that fits and return the rest in the :class:`LoadReport`.
    """
    ckpt = read_checkpoint(resolve_source(path))
    target = getattr(model, "variant_name", None) or type(model).__name__
    model_sd = model.state_dict()
    sd, notes = _adapt_input_channels(ckpt.state_dict, model_sd, ckpt.source)
    sd = resize_pos_embeds(drop_class_slots(sd, model), model)
    report = check_state_dict(model_sd, sd)
    if strict and not report.ok:
        err = _mismatch_error(ckpt, target, report)
        if any(k in _HEAD for k, _, _ in report.mismatched):
            err = ValueError(
                f"{err} (to fine-tune to another number of classes use "
                "pvt.create_model(name, pretrained=..., num_classes=N), which drops the checkpoint's head)"
            )
        elif _lacks_class_token(ckpt.state_dict) and any(k.endswith(".cls_token") for k in report.missing):
            err = ValueError(
                f"{err} (the file is a PVT v1 backbone without a class token, as the official detection and "
                "segmentation ones: pvt.create_model(name, pretrained=...) builds the model without one)"
            )
        raise err
    bad = {k for k, _, _ in report.mismatched}
    fitting = {k: v for k, v in sd.items() if k in model_sd and k not in bad}
    model.load_state_dict(fitting, strict=False)
    for msg in ckpt.notes + notes:
        _note(msg, stacklevel=2)
    cfg = getattr(model, "config", None)
    eps = _file_eps(ckpt)
    if eps and isinstance(cfg, PVTConfig):
        differs = [f for f in _EPS if getattr(cfg, f) != eps[f]]
        if differs:
            warnings.warn(
                f"checkpoint {ckpt.source} was made with "
                + ", ".join(f"{f}={eps[f]}" for f in differs)
                + " but the model uses "
                + ", ".join(f"{f}={getattr(cfg, f)}" for f in differs)
                + "; outputs will differ slightly (pvt.create_model(..., pretrained=...) matches them)",
                stacklevel=2,
            )
    return report
