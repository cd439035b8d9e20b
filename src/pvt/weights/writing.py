"""Writing a model's weights for every ecosystem: :func:`export_weights` (what ``pvt convert --to`` and
``pvt push`` call).

=========  =================================================================================================
format     what is written
=========  =================================================================================================
pvt        this library's own format: one ``.safetensors`` file, the config in its metadata
hf         an HF transformers folder: ``config.json`` (``PvtV2Config`` / ``PvtConfig``, labels),
           ``model.safetensors``, ``preprocessor_config.json``; with a head the classifier's names
           (``AutoModelForImageClassification``), without one the bare model's (``AutoModel``,
           ``PvtV2Backbone`` with all four stages as outputs)
timm       ``model.safetensors`` (timm's ``pvt_v2_*`` names) and timm's ``config.json`` beside it: a hub
           folder (``timm.create_model("local-dir:DIR")``), or a file for ``pretrained_cfg_overlay``
official   ``{"model": state_dict}`` in whai362/PVT's names (``.pth``), v1 and v2
mmdet      OpenMMLab's PVT backbone names in ``{"state_dict", "meta"}`` (``.pth``), each tensor under
           ``backbone.`` (``load_from``) and bare (the backbone's ``init_cfg``); see :func:`_mm_state_dict`
mmseg      the same file (mmsegmentation uses mmdetection's PVT backbones)
=========  =================================================================================================

The tensors are the model's, renamed by the rule tables of :mod:`pvt.weights.keys`; nothing is trained or
re-initialised. What a format cannot hold is refused with a ValueError that says what to do, except what
the OpenMMLab backbones simply do not have (v1's class token, final LayerNorm and head), which is
dropped with a note. When the format's models use other LayerNorm eps than the model (HF and OpenMMLab:
1e-6 everywhere, where the official code uses 1e-5 in the patch-embedding and spatial-reduction norms),
the export goes ahead and a note gives the output difference this causes, measured on the model itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..base.io import TMP_SUFFIX, atomic_folder, atomic_save_torch, atomic_via, atomic_write, check_apart, read_json
from ..models.config import PVTConfig
from ..models.model import PyramidVisionTransformer
from ..models.variants import VARIANTS
from .checkpoint import save_model
from .formats import EXPORT_FORMATS
from .hf_config import hf_model_type, pvt_to_hf_config
from .keys import StateDict, from_pvt
from .preprocessing import Preprocessing

__all__ = ["EXPORT_FORMATS", "FOLDER_FILES", "Export", "Preprocessing", "check_replaceable", "export_weights",
           "eps_drift", "hf_preprocessor", "source_labels", "timm_architecture"]

# (block and stage norms, patch-embedding and spatial-reduction norms) of each format's own models
_OFFICIAL_EPS = (1e-6, 1e-5)
_FORMAT_EPS: dict[str, tuple[float, float] | None] = {
    "pvt": None,  # records the model's own
    "official": _OFFICIAL_EPS,
    "timm": _OFFICIAL_EPS,
    "hf": (1e-6, 1e-6),
    "mmdet": (1e-6, 1e-6),
    "mmseg": (1e-6, 1e-6),
}
_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


@dataclass
class Export:
    """What :func:`export_weights` wrote."""

    format: str
    path: Path
    """The file or folder written."""
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """One line per thing the user should know (tensors dropped, LayerNorm eps drift)."""


def source_labels(extra: dict[str, Any], source: str | Path) -> list[str] | None:
    """The class names a checkpoint carries: its own-format metadata's (``class_names``, as ``pvt train``
    writes them), else those of the ``config.json`` of a folder source (HF ``id2label``, timm
    ``label_names``); None when it has none."""
    if isinstance(extra.get("class_names"), list):
        return [str(n) for n in extra["class_names"]]
    path = Path(source) / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = read_json(path)
    except (OSError, ValueError):
        return None
    if isinstance(cfg.get("label_names"), list):
        return [str(n) for n in cfg["label_names"]]
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            names = [str(id2label[str(i)]) for i in range(len(id2label))]
        except KeyError:
            return None
        # transformers' placeholder names say nothing
        return None if names == [f"LABEL_{i}" for i in range(len(names))] else names
    return None


# --------------------------------------------------------------------------- numerics
def _with_eps(model: PyramidVisionTransformer, layer_eps: float, embed_eps: float) -> PyramidVisionTransformer:
    """The model's tensors in a plain model whose LayerNorms use the given eps (shared, not copied)."""
    with torch.device("meta"):
        other = PyramidVisionTransformer(model.config.replace(layer_norm_eps=layer_eps, embed_norm_eps=embed_eps))
    other.load_state_dict(model.state_dict(), assign=True)
    return other.eval()


def eps_drift(model: PyramidVisionTransformer, layer_eps: float, embed_eps: float,
              size: int | None = None) -> tuple[float, float]:
    """``(max |difference|, max |value|)`` of the model's outputs (logits, or the four maps of a
    headless model) when its LayerNorms use ``layer_eps`` (block and stage norms) and ``embed_eps``
    (patch-embedding and spatial-reduction norms) instead of its own; two seeded random images of side
    ``size`` (default: the config's ``img_size``)."""
    cfg = model.config
    size = size or cfg.img_size
    x = torch.randn(2, cfg.in_chans, size, size, generator=torch.Generator().manual_seed(0))

    def outputs(m: PyramidVisionTransformer) -> list[Tensor]:
        with torch.no_grad():
            return [m(x)] if cfg.num_classes else m.forward_pyramid(x)

    was_training = model.training
    try:
        ours = outputs(model.eval())
    finally:
        model.train(was_training)
    theirs = outputs(_with_eps(model, layer_eps, embed_eps))
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    return diff, max(float(a.abs().max()) for a in ours)


def _eps_note(model: PyramidVisionTransformer, fmt: str, who: str, size: int) -> list[str]:
    target = _FORMAT_EPS[fmt]
    cfg = model.config
    if target is None or target == (cfg.layer_norm_eps, cfg.embed_norm_eps):
        return []
    diff, scale = eps_drift(model, *target, size=size)
    where = ("block and stage norms", "patch-embedding and spatial-reduction norms")
    theirs = (f"{target[0]:g} everywhere" if target[0] == target[1]
              else f"{target[0]:g} in the {where[0]} and {target[1]:g} in the {where[1]}")
    ours = [f"{v:g} in the {w}" for v, t, w in zip((cfg.layer_norm_eps, cfg.embed_norm_eps), target, where) if v != t]
    what = "logits" if cfg.num_classes else "feature maps"
    return [
        f"LayerNorm eps: {who} uses {theirs}, this model {' and '.join(ours)}: the exported model's {what} "
        f"differ from this model's by up to {diff:.2e} (largest |value| {scale:.3g}; two random {size}x{size} "
        "images)"
    ]


# --------------------------------------------------------------------------- checks
def _is_v2(cfg: PVTConfig) -> bool:
    return cfg.overlap_patch_embed and cfg.conv_ffn and not cfg.pos_embed and not cfg.cls_token


def _is_v1(cfg: PVTConfig) -> bool:
    return not cfg.overlap_patch_embed and not cfg.conv_ffn and not cfg.linear_sra and cfg.pos_embed


def timm_architecture(model: PyramidVisionTransformer) -> str:
    """The timm model name that builds ``model``'s architecture (a registered v2 variant whose shapes it
    has); a ValueError for v1 (timm has no PVT v1) and for configurations timm has no name for."""
    cfg = model.config
    if not _is_v2(cfg):
        raise ValueError("timm implements PVT v2 only (pvt_v2_*); export this model as hf, official or mmdet")
    same = ("embed_dims", "depths", "num_heads", "mlp_ratios", "sr_ratios", "patch_strides", "linear_sra",
            "qkv_bias", "stage_norms", "final_norm")
    names = [n for n, v in VARIANTS.items()
             if v.family == "v2" and all(getattr(v.config, f) == getattr(cfg, f) for f in same)
             and (not cfg.linear_sra or v.config.pool_size == cfg.pool_size)]
    if not names:
        raise ValueError("timm has no pvt_v2_* model with this configuration (it builds the registered variants "
                         "only); export it as hf, official or mmdet")
    variant = getattr(model, "variant_name", None)
    return variant if variant in names else names[0]


def _check_mm(cfg: PVTConfig) -> str:
    """``"mm_v2"`` or ``"mm_v1"``: the OpenMMLab layout of ``cfg``, or a ValueError."""
    if _is_v2(cfg) and not cfg.linear_sra:
        return "mm_v2"
    if _is_v1(cfg):
        return "mm_v1"
    if _is_v2(cfg):
        raise ValueError("OpenMMLab's PVT v2 backbone has no linear spatial-reduction attention (pvt_v2_b2_li); "
                         "export this model as pvt, hf, timm or official")
    raise ValueError("OpenMMLab's PVT backbones build PVT v1 and v2, not a mix of their designs (an ablation); "
                     "export this model as pvt or official")


def _mm_backbone(model: PyramidVisionTransformer, layout: str) -> tuple[StateDict, list[str]]:
    """Our names for what OpenMMLab's backbone holds: no head; for v1 no class token (and its slot in
    the last position embedding) and no LayerNorm after any stage."""
    sd = dict(model.state_dict())
    dropped = [k for k in ("head.weight", "head.bias") if sd.pop(k, None) is not None]
    if layout == "mm_v1":
        last = len(model.stages) - 1
        if sd.pop(f"stages.{last}.cls_token", None) is not None:
            dropped.append(f"stages.{last}.cls_token")
            sd[f"stages.{last}.pos_embed"] = sd[f"stages.{last}.pos_embed"][:, 1:]
        norms = [k for k in sd if k.startswith("stages.") and k.split(".")[2] == "norm"]
        dropped += norms
        for k in norms:
            del sd[k]
    notes = []
    if dropped:
        notes.append(
            f"OpenMMLab's PVT {layout[-2:]} backbone has no {', '.join(_groups(dropped))}: dropped "
            f"{len(dropped)} tensors ({', '.join(dropped[:6])}{', ...' if len(dropped) > 6 else ''})"
            + (" and the class slot of the last position embedding" if any("cls_token" in k for k in dropped) else ""))
    return sd, notes


def _groups(keys: list[str]) -> list[str]:
    out = []
    for k in keys:
        what = ("classifier head" if k.startswith("head.") else "class token" if k.endswith("cls_token")
                else "LayerNorm after its stages")
        if what not in out:
            out.append(what)
    return out


# --------------------------------------------------------------------------- writers
def _tensors(sd: StateDict) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _save_safetensors(sd: StateDict, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = _tensors(sd)
    atomic_via(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _labels(num_classes: int, class_names: list[str] | None) -> list[str] | None:
    if class_names is None or not num_classes:
        return None
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a {num_classes}-class head")
    return [str(n) for n in class_names]


def _check_hf(cfg: PVTConfig) -> str:
    """``"pvt_v2"`` or ``"pvt"``: the HF model type of ``cfg``, or a ValueError."""
    if cfg.pos_embed and not cfg.cls_token:
        raise ValueError("HF transformers' PvtModel always has a class token; this PVT v1 backbone has none (as the "
                         "official detection / segmentation ones): export it as official or mmdet")
    return hf_model_type(cfg)


def _write_hf(model: PyramidVisionTransformer, folder: Path, labels: list[str] | None, pre: Preprocessing) -> list[Path]:
    cfg = model.config
    kind = _check_hf(cfg)
    fields = pvt_to_hf_config(cfg)
    fields["layer_norm_eps"] = cfg.layer_norm_eps  # HF has one eps: the blocks' (see the drift note)
    base = "PvtV2" if kind == "pvt_v2" else "Pvt"
    if cfg.num_classes:
        fields["architectures"] = [f"{base}ForImageClassification"]
        names = labels or [f"LABEL_{i}" for i in range(cfg.num_classes)]
        fields["num_labels"] = cfg.num_classes  # PvtConfig has a field of its own (default 1000)
        fields["id2label"] = {str(i): n for i, n in enumerate(names)}
        fields["label2id"] = {n: i for i, n in enumerate(names)}
        sd = from_pvt(model.state_dict(), "hf_v2" if kind == "pvt_v2" else "hf_v1")
    else:  # the bare model; as a PvtV2Backbone it gives every stage's map
        fields["architectures"] = [f"{base}Model"]
        sd = from_pvt(model.state_dict(), "hf_v2" if kind == "pvt_v2" else "hf_v1", prefix="")
        if kind == "pvt_v2":
            fields["out_features"] = [f"stage{i + 1}" for i in range(cfg.num_stages)]
            fields["out_indices"] = list(range(cfg.num_stages))
    files = [folder / "config.json", folder / "model.safetensors", folder / "preprocessor_config.json"]
    _write_json(files[0], fields)
    _save_safetensors(sd, files[1], {"format": "pt"})
    _write_json(files[2], hf_preprocessor(pre, cfg.in_chans))
    return files


def hf_preprocessor(pre: Preprocessing, in_chans: int = 3) -> dict[str, Any]:
    """The ``preprocessor_config.json`` that makes transformers prepare an image exactly as ``pvt predict``
    does, ``pipeline("image-classification", model=DIR)`` with its defaults included.

    Its type is transformers' ``TimmWrapperImageProcessor`` (transformers >= 4.48, with timm installed, as
    pvt needs it): it builds timm's evaluation transform from ``pretrained_cfg``, the one ``pvt predict``
    runs (Pillow's resize of the shorter side to :attr:`Preprocessing.resize_size`, torchvision's centre
    crop). ``PvtImageProcessor``, the type transformers picks for PVT configs, cannot: by default it resizes
    a uint8 tensor with torchvision, up to 2 grey levels per pixel away from Pillow (2.9e-3 in a probability
    on the interop test's images), and its Pillow backend starts the crop a pixel earlier where the margin is
    4k+3 pixels. The same recipe is kept in ``PvtImageProcessor``'s own fields (``size``, ``crop_size``,
    ``resample``, ...), which ``TimmWrapperImageProcessor`` ignores, so ``PvtImageProcessor[Pil]
    .from_pretrained(DIR)`` still reads it where timm is not installed."""
    return {
        "image_processor_type": "TimmWrapperImageProcessor",
        "pretrained_cfg": pre.timm_fields(in_chans),
        "do_resize": True,
        "size": {"shortest_edge": pre.resize_size},
        "resample": _PIL_RESAMPLE.get(pre.interpolation, 3),
        "do_center_crop": True,
        "crop_size": {"height": pre.img_size, "width": pre.img_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }


def _timm_config(model: PyramidVisionTransformer, arch: str, labels: list[str] | None, pre: Preprocessing) -> dict:
    """timm's ``config.json`` (as ``timm.models.push_to_hf_hub`` writes it) for ``model``."""
    cfg = model.config
    out: dict[str, Any] = {"architecture": arch, "num_classes": cfg.num_classes, "num_features": model.num_features,
                           "global_pool": "avg"}
    if labels:
        out["label_names"] = labels
    out["model_args"] = {"num_classes": cfg.num_classes, "in_chans": cfg.in_chans}
    out["pretrained_cfg"] = {
        "custom_load": False,
        "fixed_input_size": False,
        **pre.timm_fields(cfg.in_chans),
        "num_classes": cfg.num_classes,
        "pool_size": [max(1, pre.img_size // 32)] * 2,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    }
    return out


def _write_timm(model: PyramidVisionTransformer, dst: Path, labels: list[str] | None, pre: Preprocessing) -> list[Path]:
    arch = timm_architecture(model)
    weights = dst if dst.suffix == ".safetensors" else dst / "model.safetensors"
    files = [weights, weights.with_name("config.json")]
    _save_safetensors(from_pvt(model.state_dict(), "timm"), weights, {"format": "pt"})
    _write_json(files[1], _timm_config(model, arch, labels, pre))
    return files


def _mm_state_dict(backbone: StateDict) -> StateDict:
    """The ``state_dict`` of an OpenMMLab file that both of mmdetection's loading paths fill completely:
    each backbone tensor under ``backbone.`` (a detector's names: ``load_from``, mmengine's runner loading
    the whole detector) and under its bare name (the backbone's own names:
    ``init_cfg=dict(type='Pretrained', checkpoint=...)``, where ``PyramidVisionTransformer.init_weights``
    in mmdet/models/backbones/pvt.py takes ``checkpoint['state_dict']``, passes names that are not the
    official ones through ``pvt_convert`` unchanged and loads them into the backbone itself). The two
    entries are one tensor, so ``torch.save`` stores it once; each path reports the other copy as
    unexpected keys (mmengine's non-strict load warns, as it warns of the detector's missing neck and
    heads under ``load_from``)."""
    return {**{f"backbone.{k}": v for k, v in backbone.items()}, **backbone}


def _mm_meta(model: PyramidVisionTransformer, layout: str) -> dict[str, Any]:
    """What the OpenMMLab file's ``meta`` records of its source: the backbone's config and variant."""
    cfg = model.config.replace(num_classes=0)
    if layout == "mm_v1":
        cfg = cfg.replace(cls_token=False, stage_norms=False, final_norm=False)
    meta: dict[str, Any] = {"config": cfg.to_dict()}
    if getattr(model, "variant_name", None):
        meta["variant"] = model.variant_name
    return meta


FOLDER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
"""Every file pvt writes in a weights folder (hf, timm, and the model card of ``pvt push``): a folder that
holds anything else is not replaced (it is the user's, not an export)."""


def is_folder_output(fmt: str, dst: Path) -> bool:
    """Whether ``fmt`` at ``dst`` is a folder, written (and replaced) as a whole (:func:`pvt.base.io.atomic_folder`)."""
    return fmt == "hf" or (fmt == "timm" and dst.suffix != ".safetensors")


def check_replaceable(folder: Path, source: str | Path | None = None, what: str = "DST") -> None:
    """A one-line ValueError unless the weights folder ``folder`` may be replaced as a whole: it is absent
    or holds only :data:`FOLDER_FILES` (and temporaries), and it is not, does not contain and does not lie
    inside ``source``."""
    if source is not None:
        check_apart(folder, source, what)
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir()
                       if p.name not in FOLDER_FILES and not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)))
        if other:
            shown = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
            raise ValueError(f"{what} {folder} holds files pvt did not write ({shown}): a weights folder is written "
                             f"and replaced as a whole, so name a new or empty folder")


def _targets(fmt: str, dst: Path) -> list[Path]:
    """The paths a format writes at ``dst`` (checked before anything is written)."""
    if fmt == "hf":
        return [dst / n for n in ("config.json", "model.safetensors", "preprocessor_config.json")]
    if fmt == "timm":
        weights = dst if dst.suffix == ".safetensors" else dst / "model.safetensors"
        return [weights, weights.with_name("config.json")]
    return [dst]


def _check_whole(model: PyramidVisionTransformer) -> None:
    """A ValueError for a ``features_only`` model cut after its last ``out_indices`` stage: every format
    holds a whole backbone (its config says how many stages), and the later stages are not there."""
    kept, total = len(model.stages), model.config.num_stages
    if kept < total:
        raise ValueError(
            f"this features_only model keeps stages 1-{kept} of {total} (out_indices="
            f"{tuple(getattr(model, 'out_indices', range(kept)))}): the later stages were never built, and every "
            "export format holds the whole backbone; export the checkpoint the model was made from (pvt convert "
            "SRC DST), or a features_only model whose out_indices include the last stage")


def export_weights(
    model: PyramidVisionTransformer,
    fmt: str,
    dst: str | Path,
    *,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    source: str | Path | None = None,
) -> Export:
    """Write ``model``'s weights in format ``fmt`` (a key of :data:`EXPORT_FORMATS`) at ``dst``.

    ``dst``: for ``pvt`` a ``.safetensors`` file; for ``official``, ``mmdet`` and ``mmseg`` a ``.pth``
    file; for ``hf`` a folder; for ``timm`` a folder, or a ``.safetensors`` file with ``config.json``
    written beside it. ``class_names`` (one per output of the head) become HF's ``id2label`` and timm's
    ``label_names``; ``preprocessing`` the input the configs describe (default: ImageNet's at the
    config's size); ``extra`` more metadata for the own format. Existing files are replaced only with
    ``force``. A folder (hf, timm) is written beside ``dst`` and swapped in as a whole, so an interruption
    leaves the previous one intact; a folder holding other files, or that is, contains or lies inside
    ``source`` (the file or folder read), is never replaced. Returns what was written and the notes for the
    user (see the module doc).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; accepted: {', '.join(EXPORT_FORMATS)}")
    if not isinstance(model, PyramidVisionTransformer):
        raise TypeError(f"export_weights takes a PyramidVisionTransformer, got {type(model).__name__}")
    _check_whole(model)
    dst = Path(dst)
    suffix = {"pvt": ".safetensors", "official": ".pth", "mmdet": ".pth", "mmseg": ".pth"}.get(fmt)
    if suffix is not None and dst.suffix != suffix:
        raise ValueError(f"the {fmt} format is one {suffix} file; DST {dst} does not end in {suffix}")
    if fmt == "hf" and dst.suffix:
        raise ValueError(f"the hf format is a folder (config.json, model.safetensors, preprocessor_config.json); "
                         f"DST {dst} looks like a file")
    existing = [p for p in _targets(fmt, dst) if p.exists()]
    if existing and not force:
        raise ValueError(f"{existing[0]} exists; pass --force to overwrite it")
    folder = is_folder_output(fmt, dst)
    if folder:
        check_replaceable(dst, source)
    cfg = model.config
    labels = _labels(cfg.num_classes, class_names)
    pre = preprocessing or Preprocessing.of(cfg)
    # what the format cannot hold is refused before anything is measured or written
    layout = _check_mm(cfg) if fmt in ("mmdet", "mmseg") else ""
    if fmt == "hf":
        _check_hf(cfg)
    elif fmt == "timm":
        timm_architecture(model)
    notes = _eps_note(model, fmt, {"hf": "HF transformers", "timm": "timm", "official": "the official code",
                                   "mmdet": "OpenMMLab's backbone", "mmseg": "OpenMMLab's backbone"}.get(fmt, ""),
                       pre.img_size)
    if fmt == "pvt":
        files = [save_model(model, dst, extra={**(extra or {}), **({"class_names": labels} if labels else {})})]
    elif folder:  # written beside, then swapped in whole: an interruption leaves the previous folder intact
        with atomic_folder(dst) as tmp:
            write = _write_hf if fmt == "hf" else _write_timm
            files = [dst / p.name for p in write(model, tmp, labels, pre)]
    elif fmt == "timm":
        files = _write_timm(model, dst, labels, pre)
    elif fmt == "official":
        files = [dst]
        atomic_save_torch({"model": _tensors(from_pvt(model.state_dict(), "official"))}, dst)
    else:
        sd, dropped = _mm_backbone(model, layout)
        notes = dropped + notes
        atomic_save_torch({"state_dict": _mm_state_dict(_tensors(from_pvt(sd, layout))),
                           "meta": {"pvt": _mm_meta(model, layout)}}, dst)
        files = [dst]
    return Export(fmt, dst, files, notes)
