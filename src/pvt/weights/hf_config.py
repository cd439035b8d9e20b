"""HF transformers' model configs (``config.json`` of ``PvtV2*`` and ``Pvt*`` models) and this library's
:class:`~pvt.models.config.PVTConfig`, both ways.

HF uses one ``layer_norm_eps`` (1e-6) for every LayerNorm; the official code and timm use 1e-5 in the
patch-embedding and spatial-reduction norms. Reading takes HF's eps into both eps fields, so a model built
from an HF folder matches HF exactly; writing records the block eps (HF has no second field).
"""

from __future__ import annotations

import math
from typing import Any

from ..base.constants import FILE_LIMITS
from ..models.config import PVTConfig

__all__ = ["hf_config_to_pvt", "pvt_to_hf_config", "hf_model_type", "config_field"]


def hf_model_type(cfg: PVTConfig) -> str:
    """``"pvt_v2"`` for v2 layouts (overlapping patches, convolutional FFN, no position embedding),
    ``"pvt"`` for v1 layouts; a ValueError for mixes neither HF model implements (the ablation steps)."""
    v2 = cfg.overlap_patch_embed and cfg.conv_ffn and not cfg.pos_embed and not cfg.cls_token
    v1 = not cfg.overlap_patch_embed and not cfg.conv_ffn and not cfg.linear_sra and cfg.pos_embed and cfg.cls_token
    if v2:
        return "pvt_v2"
    if v1:
        return "pvt"
    raise ValueError(
        "HF transformers implements PVT v2 (overlap_patch_embed, conv_ffn, no pos_embed / cls_token) and PVT v1 "
        "(none of those v2 switches, pos_embed and cls_token); this config mixes them: "
        f"overlap_patch_embed={cfg.overlap_patch_embed}, conv_ffn={cfg.conv_ffn}, linear_sra={cfg.linear_sra}, "
        f"pos_embed={cfg.pos_embed}, cls_token={cfg.cls_token}"
    )


def pvt_to_hf_config(cfg: PVTConfig) -> dict[str, Any]:
    """The fields of a ``transformers.PvtV2Config`` (v2) or ``PvtConfig`` (v1) describing ``cfg``,
    ``model_type`` included: ``PvtV2Config(**d)`` / ``PvtConfig(**d)`` builds the same network (labels
    and ``architectures`` are the caller's to add)."""
    kind = hf_model_type(cfg)
    out: dict[str, Any] = {
        "model_type": kind,
        "num_channels": cfg.in_chans,
        "num_encoder_blocks": cfg.num_stages,
        "depths": list(cfg.depths),
        "hidden_sizes": list(cfg.embed_dims),
        "strides": list(cfg.patch_strides),
        "num_attention_heads": list(cfg.num_heads),
        "mlp_ratios": [int(r) if float(r).is_integer() else r for r in cfg.mlp_ratios],
        "hidden_act": "gelu",
        "layer_norm_eps": cfg.layer_norm_eps,
        "qkv_bias": cfg.qkv_bias,
        "drop_path_rate": cfg.drop_path_rate,
        "image_size": cfg.img_size,
    }
    if kind == "pvt_v2":
        out.update(patch_sizes=[2 * s - 1 for s in cfg.patch_strides], sr_ratios=list(cfg.sr_ratios),
                   linear_attention=cfg.linear_sra)
    else:
        out.update(patch_sizes=list(cfg.patch_strides), sequence_reduction_ratios=list(cfg.sr_ratios))
    return out


def config_field(cfg: dict[str, Any], key: str, default: Any, source: str, kind: type, *, each: bool = False,
           lo: float | None = None, hi: float | None = None, entries: int = FILE_LIMITS["num_stages"]) -> Any:
    """``cfg[key]`` (``default`` when absent) checked to be a ``kind`` (a list of them with ``each``) within
    ``lo``..``hi``, finite (a list of 1..``entries``); a ValueError naming ``source`` and the field otherwise."""
    value = cfg.get(key, default)
    items = value if each else [value]

    def fits(v: Any) -> bool:
        if kind is bool:
            return isinstance(v, bool)
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else kind):
            return False
        if kind is str:
            return True
        return math.isfinite(v) and (lo is None or v >= lo) and (hi is None or v <= hi)

    if not (isinstance(items, list) and 0 < len(items) <= entries if each else True) \
            or not all(fits(v) for v in items):
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
        if lo is not None or hi is not None:
            g = lambda v: "" if v is None else str(int(v)) if float(v).is_integer() else f"{v:g}"  # noqa: E731
            what += f" {g(lo)}..{g(hi)}"
        if each:
            what = f"a list of 1..{entries} entries, each {what}"
        shown = repr(value)
        raise ValueError(f"{source}: {key} {shown[:80] + '...' if len(shown) > 80 else shown}: expected {what}")
    return list(value) if each else value


def hf_config_to_pvt(cfg: dict[str, Any], source: str = "config.json") -> PVTConfig:
    """An HF transformers ``config.json`` (``model_type`` ``pvt_v2`` or ``pvt``) as a :class:`PVTConfig`.
    Every field is checked for its type, finiteness and range first (a ValueError naming ``source`` and the
    field); the limits on sizes are :data:`pvt.base.constants.FILE_LIMITS`.

    HF uses ``layer_norm_eps`` (1e-6) in every LayerNorm, so both eps fields take it.
    """
    kind = cfg.get("model_type")
    if kind not in ("pvt_v2", "pvt"):
        raise ValueError(f"{source}: model_type {kind!r} is not a PVT model; accepted: 'pvt_v2', 'pvt'")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"{source}: hidden_act {act!r} is not supported (PVT uses 'gelu')")
    for key in ("hidden_sizes", "depths", "num_attention_heads", "mlp_ratios",
                "sr_ratios" if kind == "pvt_v2" else "sequence_reduction_ratios"):
        if key not in cfg:
            raise ValueError(f"{source}: the {kind} config lacks the field {key!r}")
    lim = FILE_LIMITS
    f = lambda key, default, kind_, **kw: config_field(cfg, key, default, source, kind_, **kw)  # noqa: E731
    dims = f("hidden_sizes", None, int, each=True, lo=1, hi=lim["embed_dims"])
    strides = f("strides", [4, 2, 2, 2], int, each=True, lo=1, hi=lim["patch_strides"])
    patch = f("patch_sizes", [7, 3, 3, 3] if kind == "pvt_v2" else [4, 2, 2, 2], int, each=True, lo=1,
              hi=2 * lim["patch_strides"])
    eps = f("layer_norm_eps", 1e-6, float, lo=1e-12, hi=0.1)
    labels = cfg.get("id2label")
    if labels is not None and not isinstance(labels, dict):
        raise ValueError(f"{source}: id2label is a JSON {type(labels).__name__}: expected an object of index: name")
    num_labels = len(labels) if labels else f("num_labels", 1000, int, lo=0, hi=lim["num_classes"])
    architectures = f("architectures", [], str, each=True, entries=16) if cfg.get("architectures") else []
    classifier = any(a.endswith("ForImageClassification") for a in architectures)
    common = dict(
        embed_dims=dims,
        depths=f("depths", None, int, each=True, lo=1, hi=lim["depths"]),
        num_heads=f("num_attention_heads", None, int, each=True, lo=1, hi=lim["num_heads"]),
        mlp_ratios=f("mlp_ratios", None, float, each=True, lo=0, hi=lim["mlp_ratios"]),
        patch_strides=strides,
        in_chans=f("num_channels", 3, int, lo=1, hi=lim["in_chans"]),
        qkv_bias=f("qkv_bias", True, bool),
        layer_norm_eps=float(eps),
        embed_norm_eps=float(eps),
        num_classes=num_labels if classifier else 0,
    )
    try:
        if kind == "pvt_v2":
            if patch != [2 * s - 1 for s in strides]:
                raise ValueError(f"patch_sizes {patch} with strides {strides} are not PVT v2's overlapping "
                                 "embedding (kernel 2S-1); not supported")
            return PVTConfig(
                **common,
                sr_ratios=f("sr_ratios", None, int, each=True, lo=1, hi=lim["sr_ratios"]),
                overlap_patch_embed=True,
                conv_ffn=True,
                linear_sra=f("linear_attention", False, bool),
                pos_embed=False,
                cls_token=False,
            )
        if patch != strides:
            raise ValueError(f"patch_sizes {patch} differ from strides {strides}; PVT v1 needs them equal")
        size = cfg.get("image_size", 224)
        size = f("image_size", 224, int, each=True, lo=16, hi=lim["img_size"])[0] if isinstance(size, list) \
            else f("image_size", 224, int, lo=16, hi=lim["img_size"])
        return PVTConfig(
            **common,
            sr_ratios=f("sequence_reduction_ratios", None, int, each=True, lo=1, hi=lim["sr_ratios"]),
            overlap_patch_embed=False,
            conv_ffn=False,
            pos_embed=True,
            cls_token=True,
            img_size=size,
        )
    except ValueError as e:
        text = str(e)
        raise ValueError(text if text.startswith(source) else f"{source}: {text}") from None
