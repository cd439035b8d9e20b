"""The published PVT variants as data: hyper-parameters (paper Table 1, PVT v1 Table 1), the
official parameter counts, the paper's ImageNet figures (Table 2), the official training defaults and
where their weights live in each ecosystem.

Every CLI table and test reads this one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base.naming import unknown_name
from .config import PVTConfig

__all__ = ["PaperFigures", "Variant", "VARIANTS", "get_variant"]


@dataclass(frozen=True, kw_only=True)
class PaperFigures:
    """What the papers report for a variant on ImageNet-1K at 224x224 (the dense-prediction tables are
    :data:`pvt.dense.paper.PAPER`)."""

    params_m: float | None
    """Parameters in millions (None: the paper gives none, as for SegFormer's MiT encoders)."""
    gflops: float | None
    top1: float | None
    """Top-1 accuracy in percent."""
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


def _v2(name: str, *, dims: tuple[int, ...], depths: tuple[int, ...], params: int, paper: PaperFigures,
        drop_path: float, clip: float | None, mlp: tuple[float, ...] = (8, 8, 4, 4), linear: bool = False,
        hf: str | None = None) -> Variant:
    cfg = PVTConfig(**dict(_V2, embed_dims=dims, depths=depths, mlp_ratios=mlp, linear_sra=linear))
    short = name.removeprefix("pvt_v2_")
    return Variant(
        name=name, config=cfg, num_params=params, paper=paper, drop_path_rate=drop_path, clip_grad=clip,
        hf_hub_id=hf or f"OpenGVLab/pvt_v2_{short}",
        timm_hub_id=f"timm/{name}.in1k",
        official_url=_OFFICIAL.format(name),
        description=f"PVT v2-{short.upper().replace('_LI', '-Li')}",
    )


def _v1(size: str, *, depths: tuple[int, ...], params: int, paper: PaperFigures, drop_path: float,
        clip: float | None) -> Variant:
    return Variant(
        name=f"pvt_v1_{size}", config=PVTConfig(**dict(_V1, depths=depths)), num_params=params, paper=paper,
        drop_path_rate=drop_path, clip_grad=clip,
        hf_hub_id=f"Zetatech/pvt-{size}-224",
        timm_hub_id=None,
        official_url=_OFFICIAL.format(f"pvt_{size}"),
        description=f"PVT v1-{size.capitalize()}",
    )


_WIDE = (64, 128, 320, 512)
_MIT_PAPER = PaperFigures(params_m=None, gflops=None, top1=None,
                          source="SegFormer (Xie et al., 2021) reports no ImageNet figures for its MiT encoders")


def _mit(size: int, *, dims: tuple[int, ...], depths: tuple[int, ...], params: int) -> Variant:
    """SegFormer's Mix Transformer MiT-B<size>: PVT v2-B<size> with MLP ratio 4 in every stage (v2: 8, 8, 4, 4;
    MiT-B5 is PVT v2-B5 exactly). The official MiT code has PVT v2's LayerNorm eps (1e-6 in blocks and stage
    norms, 1e-5 in patch-embedding and spatial-reduction norms): the config's defaults. ``num_params``: transformers'
    ``SegformerForImageClassification`` with 1000 labels, counted."""
    cfg = PVTConfig(**dict(_V2, embed_dims=dims, depths=depths, mlp_ratios=(4, 4, 4, 4)))
    return Variant(
        name=f"mit_b{size}", config=cfg, num_params=params, paper=_MIT_PAPER, drop_path_rate=0.1,
        clip_grad=None, hf_hub_id=f"nvidia/mit-b{size}", timm_hub_id=None, official_url=None,
        description=f"MiT-B{size} (SegFormer encoder)",
    )
_V1_PAPER = "PVT v1, Table 2 (as quoted in PVT v2 Table 2)"


def _paper(params_m: float, gflops: float, top1: float, source: str = "PVT v2, Table 2") -> PaperFigures:
    return PaperFigures(params_m=params_m, gflops=gflops, top1=top1, source=source)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _v1("tiny", depths=(2, 2, 2, 2), params=13_229_288, paper=_paper(13.2, 1.9, 75.1, _V1_PAPER),
            drop_path=0.1, clip=None),
        _v1("small", depths=(3, 4, 6, 3), params=24_485_864, paper=_paper(24.5, 3.8, 79.8, _V1_PAPER),
            drop_path=0.1, clip=None),
        _v1("medium", depths=(3, 4, 18, 3), params=44_208_104, paper=_paper(44.2, 6.7, 81.2, _V1_PAPER),
            drop_path=0.3, clip=1.0),
        _v1("large", depths=(3, 8, 27, 3), params=61_369_320, paper=_paper(61.4, 9.8, 81.7, _V1_PAPER),
            drop_path=0.3, clip=1.0),
        _v2("pvt_v2_b0", dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), params=3_666_760,
            paper=_paper(3.4, 0.6, 70.5), drop_path=0.1, clip=None),
        _v2("pvt_v2_b1", dims=_WIDE, depths=(2, 2, 2, 2), params=14_009_000,
            paper=_paper(13.1, 2.1, 78.7), drop_path=0.1, clip=None),
        _v2("pvt_v2_b2", dims=_WIDE, depths=(3, 4, 6, 3), params=25_362_856,
            paper=_paper(25.4, 4.0, 82.0), drop_path=0.1, clip=None),
        _v2("pvt_v2_b2_li", dims=_WIDE, depths=(3, 4, 6, 3), params=22_553_512,
            paper=_paper(22.6, 3.9, 82.1), drop_path=0.1, clip=None, linear=True, hf="OpenGVLab/pvt_v2_b2_linear"),
        _v2("pvt_v2_b3", dims=_WIDE, depths=(3, 4, 18, 3), params=45_238_696,
            paper=_paper(45.2, 6.9, 83.2), drop_path=0.3, clip=1.0),
        _v2("pvt_v2_b4", dims=_WIDE, depths=(3, 8, 27, 3), params=62_556_072,
            paper=_paper(62.6, 10.1, 83.6), drop_path=0.3, clip=1.0),
        _v2("pvt_v2_b5", dims=_WIDE, depths=(3, 6, 40, 3), mlp=(4, 4, 4, 4), params=81_956_008,
            paper=_paper(82.0, 11.8, 83.8), drop_path=0.3, clip=1.0),
        # SegFormer's encoders; drop path 0.1, the rate of every SegFormer config (its ImageNet recipe is unpublished)
        _mit(0, dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), params=3_576_392),
        _mit(1, dims=_WIDE, depths=(2, 2, 2, 2), params=13_664_424),
        _mit(2, dims=_WIDE, depths=(3, 4, 6, 3), params=24_709_288),
        _mit(3, dims=_WIDE, depths=(3, 4, 18, 3), params=44_585_128),
        _mit(4, dims=_WIDE, depths=(3, 8, 27, 3), params=61_355_688),
        _mit(5, dims=_WIDE, depths=(3, 6, 40, 3), params=81_956_008),
    ]
}


def get_variant(name: str) -> Variant:
    """The table entry for ``name``; an unknown name raises a ValueError suggesting close names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise unknown_name("model", name, VARIANTS, f"accepted: {', '.join(VARIANTS)}") from None
