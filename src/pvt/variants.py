"""The published PVT variants as data: hyper-parameters (paper Table 1, PVT v1 Table 1), the
official parameter counts, the paper's own figures (Tables 2, 3 and 5), the official training
defaults and where their weights live in each ecosystem.

Every CLI table and test reads this one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PVTConfig
from .naming import unknown_name

__all__ = ["PaperFigures", "Variant", "VARIANTS", "get_variant"]


@dataclass(frozen=True)
class PaperFigures:
    """What the papers report for a variant (ImageNet-1K at 224x224 and the dense-prediction tables).

    ``None`` where the paper has no entry.
    """

    params_m: float
    gflops: float
    top1: float
    retinanet_params_m: float | None = None
    retinanet_ap: float | None = None
    maskrcnn_params_m: float | None = None
    maskrcnn_ap_box: float | None = None
    maskrcnn_ap_mask: float | None = None
    semfpn_params_m: float | None = None
    semfpn_gflops: float | None = None
    semfpn_miou: float | None = None
    source: str = "PVT v2, Table 2"


@dataclass(frozen=True)
class Variant:
    name: str
    config: PVTConfig
    num_params: int
    """Parameters of the official implementation with a 1000-class head (equal in timm and HF)."""
    paper: PaperFigures
    drop_path_rate: float
    """Stochastic-depth rate of the official ImageNet training config."""
    clip_grad: float | None
    """Gradient-norm clipping of the official ImageNet training config (None: off)."""
    hf_hub_id: str | None = None
    timm_hub_id: str | None = None
    official_url: str | None = None
    description: str = ""

    @property
    def family(self) -> str:
        return "v1" if self.config.pos_embed else "v2"


_V2 = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), patch_strides=(4, 2, 2, 2))
_V1 = dict(
    _V2,
    mlp_ratios=(8, 8, 4, 4),
    overlap_patch_embed=False,
    conv_ffn=False,
    pos_embed=True,
    cls_token=True,
)
_OFFICIAL = "https://github.com/whai362/PVT/releases/download/v2/{}.pth"


def _v2(name, dims, depths, mlp, params, paper, dpr, clip, linear=False, hf=None):
    cfg = PVTConfig(**dict(_V2, embed_dims=dims, depths=depths, mlp_ratios=mlp, linear_sra=linear))
    short = name.removeprefix("pvt_v2_")
    return Variant(
        name,
        cfg,
        params,
        paper,
        dpr,
        clip,
        hf_hub_id=hf or f"OpenGVLab/pvt_v2_{short}",
        timm_hub_id=f"timm/{name}.in1k",
        official_url=_OFFICIAL.format(name),
        description=f"PVT v2-{short.upper().replace('_LI', '-Li')}",
    )


def _v1(size, depths, params, paper, dpr, clip):
    return Variant(
        f"pvt_v1_{size}",
        PVTConfig(**dict(_V1, depths=depths)),
        params,
        paper,
        dpr,
        clip,
        hf_hub_id=f"Zetatech/pvt-{size}-224",
        timm_hub_id=None,
        official_url=_OFFICIAL.format(f"pvt_{size}"),
        description=f"PVT v1-{size.capitalize()}",
    )


_MLP_V2 = (8, 8, 4, 4)
_WIDE = (64, 128, 320, 512)
_V1_PAPER = "PVT v1 Tables 1-3 (as quoted in PVT v2 Tables 2, 3, 5)"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _v1("tiny", (2, 2, 2, 2), 13_229_288,
            PaperFigures(13.2, 1.9, 75.1, 23.0, 36.7, 32.9, 36.7, 35.1, 17.0, 33.2, 35.7, source=_V1_PAPER), 0.1, None),
        _v1("small", (3, 4, 6, 3), 24_485_864,
            PaperFigures(24.5, 3.8, 79.8, 34.2, 40.4, 44.1, 40.4, 37.8, 28.2, 44.5, 39.8, source=_V1_PAPER), 0.1, None),
        _v1("medium", (3, 4, 18, 3), 44_208_104,
            PaperFigures(44.2, 6.7, 81.2, None, None, None, None, None, 48.0, 61.0, 41.6, source=_V1_PAPER), 0.3, 1.0),
        _v1("large", (3, 8, 27, 3), 61_369_320,
            PaperFigures(61.4, 9.8, 81.7, None, None, None, None, None, 65.1, 79.6, 42.1, source=_V1_PAPER), 0.3, 1.0),
        _v2("pvt_v2_b0", (32, 64, 160, 256), (2, 2, 2, 2), _MLP_V2, 3_666_760,
            PaperFigures(3.4, 0.6, 70.5, 13.0, 37.2, 23.5, 38.2, 36.2, 7.6, 25.0, 37.2), 0.1, None),
        _v2("pvt_v2_b1", _WIDE, (2, 2, 2, 2), _MLP_V2, 14_009_000,
            PaperFigures(13.1, 2.1, 78.7, 23.8, 41.2, 33.7, 41.8, 38.8, 17.8, 34.2, 42.5), 0.1, None),
        _v2("pvt_v2_b2", _WIDE, (3, 4, 6, 3), _MLP_V2, 25_362_856,
            PaperFigures(25.4, 4.0, 82.0, 35.1, 44.6, 45.0, 45.3, 41.2, 29.1, 45.8, 45.2), 0.1, None),
        _v2("pvt_v2_b2_li", _WIDE, (3, 4, 6, 3), _MLP_V2, 22_553_512,
            PaperFigures(22.6, 3.9, 82.1, 32.3, 43.6, 42.2, 44.1, 40.5, 26.3, 41.0, 45.1), 0.1, None,
            linear=True, hf="OpenGVLab/pvt_v2_b2_linear"),
        _v2("pvt_v2_b3", _WIDE, (3, 4, 18, 3), _MLP_V2, 45_238_696,
            PaperFigures(45.2, 6.9, 83.2, 55.0, 45.9, 64.9, 47.0, 42.5, 49.0, 62.4, 47.3), 0.3, 1.0),
        _v2("pvt_v2_b4", _WIDE, (3, 8, 27, 3), _MLP_V2, 62_556_072,
            PaperFigures(62.6, 10.1, 83.6, 72.3, 46.1, 82.2, 47.5, 42.7, 66.3, 81.3, 47.9), 0.3, 1.0),
        _v2("pvt_v2_b5", _WIDE, (3, 6, 40, 3), (4, 4, 4, 4), 81_956_008,
            PaperFigures(82.0, 11.8, 83.8, 91.7, 46.2, 101.6, 47.4, 42.5, 85.7, 91.1, 48.7), 0.3, 1.0),
    ]
}


def get_variant(name: str) -> Variant:
    """The table entry for ``name``; an unknown name raises a ValueError suggesting close names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise unknown_name("model", name, VARIANTS, f"accepted: {', '.join(VARIANTS)}") from None
