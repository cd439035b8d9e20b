"""PVT weights into the PVT inside any HF transformers model: :func:`load_into`.

transformers builds a PVT wherever a config names one: ``PvtV2ForImageClassification.pvt_v2``, a
``PvtV2Backbone`` as the backbone of a detector (``DeformableDetrConfig(backbone_config=PvtV2Config(...),
use_timm_backbone=False)`` puts one at ``model.backbone.model``), a ``PvtModel`` (v1). :func:`load_into`
finds that module by its class, renames a pvt checkpoint's tensors to transformers' names (the rule tables
of :mod:`pvt.weights.keys`) and loads them strictly, so that a detector's backbone starts from pvt weights
with one call instead of hand-written ``load_state_dict`` glue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..models.model import PyramidVisionTransformer
from .files import Checkpoint
from .hf_config import hf_model_type
from .keys import from_pvt
from .loading import MAX_LISTED, create_pretrained
from .writing import eps_drift

__all__ = ["LoadedInto", "load_into"]

# transformers' PVT model classes (the bare models; PvtV2Backbone is a PvtV2Model) and their HF model types
_CLASSES = {"PvtV2Model": "pvt_v2", "PvtModel": "pvt"}


@dataclass
class LoadedInto:
    """What :func:`load_into` loaded: where, which tensors, from what."""

    module: str
    """The submodule's path in the model (``""``: the model itself), e.g. ``model.backbone.model``."""
    module_class: str
    keys: list[str] = field(default_factory=list)
    """Every tensor of the submodule, in transformers' names: all were loaded (the load is strict)."""
    source: str = ""
    notes: list[str] = field(default_factory=list)
    """What the user should know (LayerNorm eps: transformers uses one eps everywhere)."""


def _pvt_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The outermost submodules of ``model`` that are transformers' PVT models: ``(path, module, model type)``."""
    found: list[tuple[str, nn.Module, str]] = []
    for path, module in model.named_modules():
        if any(p == "" or path.startswith(p + ".") for p, _, _ in found):
            continue  # inside a PVT model already found
        kind = next((t for c in type(module).__mro__ for n, t in _CLASSES.items()
                     if c.__name__ == n and c.__module__.startswith("transformers.")), None)
        if kind is not None:
            found.append((path, module, kind))
    return found


def _listed(keys: list[str]) -> str:
    more = f", ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def load_into(hf_model: nn.Module, checkpoint: str | Path | Checkpoint | PyramidVisionTransformer, *,
              module: str | None = None) -> LoadedInto:
    """Load ``checkpoint`` into the PVT inside the transformers model ``hf_model`` and say what was loaded.

    ``checkpoint``: anything ``pvt.create_model(..., pretrained=...)`` reads (a file or folder in any
    layout, ``hf-hub:<repo>``, a pvt train run's checkpoint, a detector's: its backbone), or a pvt model.
    Its classifier head, if any, is not used. The PVT is found by class (``PvtV2Model`` and
    ``PvtV2Backbone``, ``PvtModel`` for v1); ``module`` names it by path where a model holds several.
    The load is strict: a checkpoint of another architecture (v1 into v2, other widths or depths) is a
    ValueError that lists the missing, unexpected and mis-shaped tensors, and nothing is changed.
    """
    found = _pvt_modules(hf_model)
    name = type(hf_model).__name__
    if module is not None:
        paths = [p for p, _, _ in found]
        found = [f for f in found if f[0] == module]
        if not found:
            raise ValueError(f"{name} has no PVT model at {module!r}; its PVT models are at: "
                             f"{', '.join(repr(p) for p in paths) or 'nowhere'}")
    if not found:
        raise ValueError(f"{name} holds no PVT model (transformers' PvtV2Model, PvtV2Backbone or PvtModel); "
                         "load_into fills the PVT inside a transformers model, e.g. the backbone of "
                         "DeformableDetrConfig(backbone_config=PvtV2Config(...), use_timm_backbone=False)")
    if len(found) > 1:
        raise ValueError(f"{name} holds {len(found)} PVT models ({', '.join(repr(p) for p, _, _ in found)}); "
                         "pass module=PATH to choose one")
    path, target, kind = found[0]
    where = f"the {type(target).__name__} at {path!r}" if path else f"the {type(target).__name__}"
    if isinstance(checkpoint, PyramidVisionTransformer):
        ours, source = checkpoint, f"a {getattr(checkpoint, 'variant_name', None) or 'PVT'} model"
    else:
        ours = create_pretrained(None, checkpoint, num_classes=0)
        source = str(checkpoint.source if isinstance(checkpoint, Checkpoint) else checkpoint)
    what = f"checkpoint {source} ({getattr(ours, 'variant_name', None) or 'custom configuration'})"
    theirs_kind = hf_model_type(ours.config)
    if theirs_kind != kind:
        family = {"pvt_v2": "PVT v2", "pvt": "PVT v1"}
        raise ValueError(f"{what} holds {family[theirs_kind]} but {where} is {family[kind]}")
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("head.")}
    new = from_pvt(sd, "hf_v2" if kind == "pvt_v2" else "hf_v1", prefix="")
    own = target.state_dict()
    missing = [k for k in own if k not in new]
    unexpected = [k for k in new if k not in own]
    shapes = [f"{k} file {list(new[k].shape)} vs model {list(own[k].shape)}" for k in own
              if k in new and new[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {_listed(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
        raise ValueError(f"{what} does not fit {where}: {'; '.join(parts)}")
    target.load_state_dict(new, strict=True)
    return LoadedInto(path, type(target).__name__, list(own), source, _eps_notes(ours, target))


def _eps_notes(ours: PyramidVisionTransformer, target: nn.Module) -> list[str]:
    """transformers' PVT uses its config's one ``layer_norm_eps`` in every LayerNorm; a note when the
    checkpoint's model used others, with the difference that makes on the maps (measured on it)."""
    config: Any = getattr(target, "config", None)
    eps = getattr(config, "layer_norm_eps", None)
    cfg = ours.config
    if eps is None or (cfg.layer_norm_eps, cfg.embed_norm_eps) == (eps, eps):
        return []
    diff, scale = eps_drift(ours, float(eps), float(eps))
    return [f"LayerNorm eps: the transformers model uses {eps:g} everywhere, the checkpoint's model "
            f"{cfg.layer_norm_eps:g} / {cfg.embed_norm_eps:g} (blocks / patch embeddings and spatial reduction): "
            f"its outputs differ by up to {diff:.2e} (largest |value| {scale:.3g})"]
