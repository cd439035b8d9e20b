"""transformers' SegFormer and GLPN folders, both ways: ``SegformerForSemanticSegmentation`` <-> :class:`SegFormer`,
``SegformerForImageClassification`` / ``SegformerModel`` <-> a MiT :class:`PyramidVisionTransformer`,
``GLPNForDepthEstimation`` <-> :class:`GLPN`.

    >>> model = load_hf_task_model("path/to/segformer-folder")        # config.json + model.safetensors
    >>> save_hf_task_model(model, "out-folder")                       # loads in transformers again

The key rules are :data:`pvt.weights.keys.HF_TASK_LAYOUTS`. transformers builds every LayerNorm of these models
with eps 1e-5, so models read from such a folder have both eps fields at 1e-5 (the official MiT: 1e-6 in blocks
and stage norms); saving writes the tensors as they are. Only ``.safetensors`` weights are read (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..base.constants import FILE_LIMITS
from ..base.io import atomic_folder, read_json
from ..models.config import PVTConfig
from ..models.model import PyramidVisionTransformer
from ..weights.hf_config import config_field
from ..weights.keys import HF_TASK_LAYOUTS
from .backbone import PVTBackbone
from .glpn import GLPN
from .segformer import SegFormer

__all__ = ["load_hf_task_model", "save_hf_task_model", "HF_EPS"]

HF_EPS = 1e-5
"""The eps of every LayerNorm in transformers' Segformer and GLPN models."""
_KINDS = {"segformer": ("SegformerForSemanticSegmentation", "SegformerForImageClassification", "SegformerModel"),
          "glpn": ("GLPNForDepthEstimation",)}


def _encoder_config(cfg: dict[str, Any], source: str, num_classes: int) -> PVTConfig:
    """MiT's encoder config from a transformers Segformer / GLPN ``config.json``, every field checked for its
    type, finiteness and range first (:func:`pvt.weights.hf_config.config_field`, the limits of
    :data:`pvt.base.constants.FILE_LIMITS`)."""
    lim = FILE_LIMITS
    f = lambda key, default, kind, **kw: config_field(cfg, key, default, source, kind, **kw)  # noqa: E731
    for key in ("hidden_sizes", "depths", "num_attention_heads", "mlp_ratios", "sr_ratios"):
        if key not in cfg:
            raise ValueError(f"{source}: the config lacks the field {key!r}")
    strides = f("strides", [4, 2, 2, 2], int, each=True, lo=1, hi=lim["patch_strides"])
    patch = f("patch_sizes", [7, 3, 3, 3], int, each=True, lo=1, hi=2 * lim["patch_strides"])
    if patch != [2 * s - 1 for s in strides]:
        raise ValueError(f"{source}: patch_sizes {patch} are not MiT's overlapping 2S-1 kernels")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (MiT uses 'gelu')")
    return PVTConfig(embed_dims=f("hidden_sizes", None, int, each=True, lo=1, hi=lim["embed_dims"]),
                     depths=f("depths", None, int, each=True, lo=1, hi=lim["depths"]),
                     num_heads=f("num_attention_heads", None, int, each=True, lo=1, hi=lim["num_heads"]),
                     mlp_ratios=f("mlp_ratios", None, float, each=True, lo=0, hi=lim["mlp_ratios"]),
                     sr_ratios=f("sr_ratios", None, int, each=True, lo=1, hi=lim["sr_ratios"]),
                     patch_strides=strides, in_chans=f("num_channels", 3, int, lo=1, hi=lim["in_chans"]),
                     num_classes=num_classes, layer_norm_eps=HF_EPS, embed_norm_eps=HF_EPS)


def _read(folder: Path) -> dict[str, Any]:
    """The folder's config.json (its model_type checked); the weights are read once the config is."""
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ValueError(f"{str(folder)!r} is not a transformers folder (expected config.json and model.safetensors)")
    cfg = read_json(cfg_path)
    if cfg.get("model_type") not in _KINDS:
        raise ValueError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not one of {', '.join(_KINDS)}")
    return cfg


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors' errors have no public base class)
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None


def load_hf_task_model(folder: str | Path) -> nn.Module:
    """The model a transformers Segformer / GLPN folder holds, with its weights (strict: every tensor used)."""
    folder = Path(folder).expanduser()
    cfg = _read(folder)
    src = str(folder / "config.json")
    f = lambda key, default, kind, **kw: config_field(cfg, key, default, src, kind, **kw)  # noqa: E731
    arch = (f("architectures", [], str, each=True, entries=16) if cfg.get("architectures")
            else [_KINDS[cfg["model_type"]][0]])[0]
    labels = cfg.get("id2label")
    if labels is not None and not isinstance(labels, dict):
        raise ValueError(f"{src}: id2label is a JSON {type(labels).__name__}: expected an object of index: name")
    num_labels = len(labels) if labels else f("num_labels", 2, int, lo=1, hi=FILE_LIMITS["num_classes"])
    if arch == "GLPNForDepthEstimation":
        if cfg.get("head_in_index", -1) != -1:
            raise ValueError(f"{src}: head_in_index {cfg['head_in_index']!r} is not supported (GLPN's head reads -1)")
        model: nn.Module = GLPN(PyramidVisionTransformer(_encoder_config(cfg, src, 0)),
                                f("decoder_hidden_size", 64, int, lo=1, hi=FILE_LIMITS["embed_dims"]),
                                float(f("max_depth", 10, float, lo=1e-3, hi=1e6)))
        layout = HF_TASK_LAYOUTS["hf_glpn"]
    elif arch == "SegformerForSemanticSegmentation":
        model = SegFormer(PyramidVisionTransformer(_encoder_config(cfg, src, 0)), num_labels,
                          f("decoder_hidden_size", 256, int, lo=1, hi=FILE_LIMITS["embed_dims"]))
        layout = HF_TASK_LAYOUTS["hf_segformer"]
    elif arch in ("SegformerForImageClassification", "SegformerModel"):
        classes = num_labels if arch == "SegformerForImageClassification" else 0
        model = PyramidVisionTransformer(_encoder_config(cfg, src, classes))
        layout = HF_TASK_LAYOUTS["hf_mit"]
    else:
        raise ValueError(f"{src}: architecture {arch!r} is not supported; accepted: "
                         + ", ".join(a for v in _KINDS.values() for a in v))
    ours = layout.to_pvt(_weights(folder / "model.safetensors"))
    mine = model.state_dict()
    missing = sorted(set(mine) - set(ours))
    extra = sorted(set(ours) - set(mine))
    bad = [k for k in mine if k in ours and ours[k].shape != mine[k].shape]
    if missing or extra or bad:
        raise ValueError(f"{folder}: the weights do not fit its config ({len(missing)} missing, {len(extra)} "
                         f"unexpected, {len(bad)} of another shape), e.g. {(missing + extra + bad)[0]}")
    model.load_state_dict(ours)
    if isinstance(labels, dict):
        model.class_names = [str(labels.get(str(i), i)) for i in range(num_labels)]
    return model.eval()


def _config(model: nn.Module) -> dict[str, Any]:
    body: PyramidVisionTransformer = model.backbone.body if isinstance(getattr(model, "backbone", None),
                                                                        PVTBackbone) else model
    cfg = body.config
    if cfg.pos_embed or cfg.cls_token or not (cfg.overlap_patch_embed and cfg.conv_ffn) or cfg.linear_sra:
        raise ValueError("transformers' Segformer / GLPN encoder is MiT (PVT v2 without linear SRA); this model's "
                         "backbone is not")
    out = {"num_channels": cfg.in_chans, "num_encoder_blocks": cfg.num_stages, "depths": list(cfg.depths),
           "sr_ratios": list(cfg.sr_ratios), "hidden_sizes": list(cfg.embed_dims),
           "patch_sizes": [2 * s - 1 for s in cfg.patch_strides], "strides": list(cfg.patch_strides),
           "num_attention_heads": list(cfg.num_heads),
           "mlp_ratios": [int(r) if float(r).is_integer() else r for r in cfg.mlp_ratios],
           "hidden_act": "gelu", "layer_norm_eps": 1e-6}
    return out


def save_hf_task_model(model: nn.Module, folder: str | Path, *, force: bool = False) -> Path:
    """Write ``model`` (a :class:`SegFormer`, :class:`GLPN` or MiT / PVT v2 classifier) as a transformers folder
    (config.json + model.safetensors) that ``AutoModel...from_pretrained`` loads; written beside and swapped in whole."""
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FileExistsError(f"{str(folder)!r} exists and is not empty (use force to overwrite)")
    cfg = _config(model)
    n = getattr(model, "num_classes", 0)
    if isinstance(model, GLPN):
        cfg.update(model_type="glpn", architectures=["GLPNForDepthEstimation"],
                   decoder_hidden_size=model.head.conv1.in_channels, head_in_index=-1,
                   max_depth=int(model.max_depth) if model.max_depth.is_integer() else model.max_depth)
        layout = HF_TASK_LAYOUTS["hf_glpn"]
    elif isinstance(model, SegFormer):
        cfg.update(model_type="segformer", architectures=["SegformerForSemanticSegmentation"],
                   decoder_hidden_size=model.head.linear_fuse.out_channels, num_labels=n, reshape_last_stage=True)
        layout = HF_TASK_LAYOUTS["hf_segformer"]
    elif isinstance(model, PyramidVisionTransformer):
        arch = "SegformerForImageClassification" if model.num_classes else "SegformerModel"
        cfg.update(model_type="segformer", architectures=[arch], num_labels=model.num_classes or 2)
        layout = HF_TASK_LAYOUTS["hf_mit"]
    else:
        raise ValueError(f"cannot write a {type(model).__name__} as a transformers Segformer / GLPN folder")
    names = getattr(model, "class_names", None)
    if names and "num_labels" in cfg and len(names) == cfg["num_labels"]:
        cfg["id2label"] = {str(i): str(c) for i, c in enumerate(names)}
        cfg["label2id"] = {str(c): i for i, c in enumerate(names)}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    theirs = layout.from_pvt(sd, prefix="" if layout is HF_TASK_LAYOUTS["hf_mit"] and not model.num_classes else None)
    with atomic_folder(folder) as tmp:  # the whole folder or the previous one, never a mix
        save_file(theirs, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder
