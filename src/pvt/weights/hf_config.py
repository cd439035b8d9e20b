"""HF transformers' model configs (``config.json`` of ``PvtV2*`` and ``Pvt*`` models) and this library's
:class:`~pvt.config.PVTConfig`, both ways.

HF uses one ``layer_norm_eps`` (1e-6) for every LayerNorm; the official code and timm use 1e-5 in the
patch-embedding and spatial-reduction norms. Reading takes HF's eps into both eps fields, so a model built
from an HF folder matches HF exactly; writing records the block eps (HF has no second field).
"""

from __future__ import annotations

from typing import Any

from ..config import PVTConfig

__all__ = ["hf_config_to_pvt", "pvt_to_hf_config", "hf_model_type"]


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


def hf_config_to_pvt(cfg: dict[str, Any], source: str = "config.json") -> PVTConfig:
    """An HF transformers ``config.json`` (``model_type`` ``pvt_v2`` or ``pvt``) as a :class:`PVTConfig`.

    HF uses ``layer_norm_eps`` (1e-6) in every LayerNorm, so both eps fields take it.
    """
    kind = cfg.get("model_type")
    if kind not in ("pvt_v2", "pvt"):
        raise ValueError(f"{source}: model_type {kind!r} is not a PVT model; accepted: 'pvt_v2', 'pvt'")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"{source}: hidden_act {act!r} is not supported (PVT uses 'gelu')")
    try:
        dims = list(cfg["hidden_sizes"])
        strides = list(cfg.get("strides", [4, 2, 2, 2]))
        patch = list(cfg.get("patch_sizes", [7, 3, 3, 3] if kind == "pvt_v2" else [4, 2, 2, 2]))
        eps = float(cfg.get("layer_norm_eps", 1e-6))
        labels = cfg.get("id2label")
        num_labels = len(labels) if isinstance(labels, dict) else int(cfg.get("num_labels", 1000))
        classifier = any(a.endswith("ForImageClassification") for a in cfg.get("architectures") or [])
        common = dict(
            embed_dims=dims,
            depths=list(cfg["depths"]),
            num_heads=list(cfg["num_attention_heads"]),
            mlp_ratios=list(cfg["mlp_ratios"]),
            patch_strides=strides,
            in_chans=int(cfg.get("num_channels", 3)),
            qkv_bias=bool(cfg.get("qkv_bias", True)),
            layer_norm_eps=eps,
            embed_norm_eps=eps,
            num_classes=num_labels if classifier else 0,
        )
        if kind == "pvt_v2":
            if patch != [2 * s - 1 for s in strides]:
                raise ValueError(
                    f"{source}: patch_sizes {patch} with strides {strides} are not PVT v2's overlapping "
                    "embedding (kernel 2S-1); not supported"
                )
            return PVTConfig(
                **common,
                sr_ratios=list(cfg["sr_ratios"]),
                overlap_patch_embed=True,
                conv_ffn=True,
                linear_sra=bool(cfg.get("linear_attention", False)),
                pos_embed=False,
                cls_token=False,
            )
        if patch != strides:
            raise ValueError(f"{source}: patch_sizes {patch} differ from strides {strides}; PVT v1 needs them equal")
        size = cfg.get("image_size", 224)
        return PVTConfig(
            **common,
            sr_ratios=list(cfg["sequence_reduction_ratios"]),
            overlap_patch_embed=False,
            conv_ffn=False,
            pos_embed=True,
            cls_token=True,
            img_size=int(size[0] if isinstance(size, (list, tuple)) else size),
        )
    except KeyError as e:
        raise ValueError(f"{source}: the {kind} config lacks the field {e.args[0]!r}") from None
    except TypeError as e:
        raise ValueError(f"{source}: malformed {kind} config: {e}") from None
