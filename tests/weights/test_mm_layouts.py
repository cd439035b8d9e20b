"""OpenMMLab's PVT backbone layouts (``mm_v1`` / ``mm_v2``), both ways.

mmcv is not a test dependency, so :class:`MMBackbone` rebuilds the module tree of mmdetection's
``PyramidVisionTransformer[V2]`` from plain PyTorch, with the same attribute names and the same
computation: ``layers.{i}`` = [``PatchEmbed`` (``projection``, ``norm``), a ``ModuleList`` of (v1) the
position embedding and the encoder layers (``norm1``, ``attn`` whose ``attn`` is an
``nn.MultiheadAttention``, ``sr``, ``norm``, ``norm2``, ``ffn.layers`` of 1x1 convolutions), the stage
norm (v2) or ``nn.Identity`` (v1)], every LayerNorm with eps 1e-6. Its state dict is the format; its
outputs check that the tensors mean the same thing on both sides.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pvt
from pvt.weights import create_pretrained
from pvt.weights import keys as K
from pvt.weights.writing import export_weights

EPS = 1e-6


class _PatchEmbed(nn.Module):
    def __init__(self, cin: int, c: int, k: int, s: int, p: int):
        super().__init__()
        self.projection = nn.Conv2d(cin, c, k, s, p)
        self.norm = nn.LayerNorm(c, eps=EPS)

    def forward(self, x):
        x = self.projection(x)
        return self.norm(x.flatten(2).transpose(1, 2)), x.shape[-2:]


class _SRA(nn.Module):
    def __init__(self, c: int, heads: int, sr: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.sr_ratio = sr
        if sr > 1:
            self.sr = nn.Conv2d(c, c, sr, sr)
            self.norm = nn.LayerNorm(c, eps=EPS)

    def forward(self, x, hw, identity):
        kv = x
        if self.sr_ratio > 1:
            m = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
            kv = self.norm(self.sr(m).flatten(2).transpose(1, 2))
        return identity + self.attn(x, kv, kv)[0]


class _FFN(nn.Module):
    def __init__(self, c: int, hidden: int, conv: bool):
        super().__init__()
        layers = [nn.Conv2d(c, hidden, 1), nn.GELU(), nn.Dropout(0.0), nn.Conv2d(hidden, c, 1), nn.Dropout(0.0)]
        if conv:
            layers.insert(1, nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden))
        self.layers = nn.Sequential(*layers)

    def forward(self, x, hw, identity):
        m = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
        return identity + self.layers(m).flatten(2).transpose(1, 2)


class _Layer(nn.Module):
    def __init__(self, c: int, heads: int, sr: int, mlp: float, conv: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(c, eps=EPS)
        self.attn = _SRA(c, heads, sr)
        self.norm2 = nn.LayerNorm(c, eps=EPS)
        self.ffn = _FFN(c, int(c * mlp), conv)

    def forward(self, x, hw):
        x = self.attn(self.norm1(x), hw, x)
        return self.ffn(self.norm2(x), hw, x)


class _PosEmbed(nn.Module):
    def __init__(self, side: int, c: int):
        super().__init__()
        self.side = side
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, c))

    def forward(self, x, hw):
        grid = self.pos_embed.reshape(1, self.side, self.side, -1).permute(0, 3, 1, 2)
        return x + F.interpolate(grid, size=tuple(hw), mode="bilinear").flatten(2).transpose(1, 2)


class MMBackbone(nn.Module):
    """mmdetection's PVT (v1) / PVT v2 backbone structure for a PVTConfig (see module doc)."""

    def __init__(self, cfg: pvt.PVTConfig):
        super().__init__()
        v2 = cfg.overlap_patch_embed
        self.layers = nn.ModuleList()
        cin, side = cfg.in_chans, cfg.img_size
        for i, c in enumerate(cfg.embed_dims):
            s = cfg.patch_strides[i]
            k, p = (2 * s - 1, s - 1) if v2 else (s, 0)
            side //= s
            inner = nn.ModuleList([_PosEmbed(side, c)] if not v2 else [])
            inner.extend(_Layer(c, cfg.num_heads[i], cfg.sr_ratios[i], cfg.mlp_ratios[i], v2)
                         for _ in range(cfg.depths[i]))
            self.layers.append(nn.ModuleList([_PatchEmbed(cin, c, k, s, p), inner,
                                              nn.LayerNorm(c, eps=EPS) if v2 else nn.Identity()]))
            cin = c

    def forward(self, x):
        outs = []
        for embed, inner, norm in self.layers:
            x, hw = embed(x)
            for m in inner:
                x = m(x, hw)
            x = norm(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
            outs.append(x)
        return outs


CASES = [("pvt_v2_b0", {}, "mm_v2"), ("pvt_v1_tiny", {"cls_token": False, "stage_norms": False, "final_norm": False},
                                       "mm_v1")]


@pytest.mark.parametrize("name,backbone,layout", CASES)
def test_our_backbone_in_mm_names_runs_in_their_module(name, backbone, layout, perturb):
    """ours -> mm: their module takes the state dict strictly (every name and shape) and computes our maps."""
    torch.manual_seed(0)
    ours = perturb(pvt.create_model(name, num_classes=0, accelerate=False, layer_norm_eps=EPS,
                                      embed_norm_eps=EPS, **backbone))
    theirs = MMBackbone(ours.config).eval()
    sd = K.from_pvt(ours.state_dict(), layout)
    assert K.detect_key_format(sd) == layout
    theirs.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        got, ref = theirs(x), ours.forward_pyramid(x)
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert max((a - b).abs().max().item() for a, b in zip(got, ref)) < 1e-4
    back = K.to_pvt(sd, layout)
    assert set(back) == set(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("name,backbone,layout", CASES)
def test_their_checkpoint_loads_as_a_backbone(name, backbone, layout, tmp_path, perturb):
    """mm -> ours: an mmdetection-style checkpoint (``{"state_dict": backbone.* + neck/head, "meta"}``) gives
    the backbone, built with their LayerNorm eps (1e-6 everywhere), and the same maps as their module."""
    torch.manual_seed(0)
    cfg = pvt.get_variant(name).config.replace(num_classes=0, **backbone)
    theirs = perturb(MMBackbone(cfg))
    full = {f"backbone.{k}": v for k, v in theirs.state_dict().items()}
    full["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 64, 1, 1)
    full["bbox_head.retina_cls.weight"] = torch.zeros(9, 256, 3, 3)
    torch.save({"state_dict": full, "meta": {"epoch": 12}}, tmp_path / "retinanet.pth")
    with pytest.warns(UserWarning, match="dense-prediction checkpoint: took the .* under 'backbone.' and dropped the "
                                         r"other 2 \(bbox_head.\* \(1\), neck.\* \(1\)\)"):
        m = create_pretrained(None, tmp_path / "retinanet.pth", num_classes=0).eval()
    assert m.variant_name == name
    assert (m.config.layer_norm_eps, m.config.embed_norm_eps) == (EPS, EPS)
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        got, ref = m.forward_pyramid(x), theirs(x)
    assert max((a - b).abs().max().item() for a, b in zip(got, ref)) < 1e-4


def test_mm_names_exactly():
    """The names and shapes mmdetection's converter (``pvt_convert``) gives the official B0 / v1-Tiny weights."""
    v2 = K.from_pvt(pvt.create_model("pvt_v2_b0", num_classes=0, accelerate=False).state_dict(), "mm_v2")
    assert [(k, tuple(v.shape)) for k, v in v2.items() if k.startswith("layers.0.1.0.")] == [
        ("layers.0.1.0.norm1.weight", (32,)), ("layers.0.1.0.norm1.bias", (32,)),
        ("layers.0.1.0.attn.attn.in_proj_weight", (96, 32)), ("layers.0.1.0.attn.attn.in_proj_bias", (96,)),
        ("layers.0.1.0.attn.attn.out_proj.weight", (32, 32)), ("layers.0.1.0.attn.attn.out_proj.bias", (32,)),
        ("layers.0.1.0.attn.sr.weight", (32, 32, 8, 8)), ("layers.0.1.0.attn.sr.bias", (32,)),
        ("layers.0.1.0.attn.norm.weight", (32,)), ("layers.0.1.0.attn.norm.bias", (32,)),
        ("layers.0.1.0.norm2.weight", (32,)), ("layers.0.1.0.norm2.bias", (32,)),
        ("layers.0.1.0.ffn.layers.0.weight", (256, 32, 1, 1)), ("layers.0.1.0.ffn.layers.0.bias", (256,)),
        ("layers.0.1.0.ffn.layers.1.weight", (256, 1, 3, 3)), ("layers.0.1.0.ffn.layers.1.bias", (256,)),
        ("layers.0.1.0.ffn.layers.4.weight", (32, 256, 1, 1)), ("layers.0.1.0.ffn.layers.4.bias", (32,)),
    ]
    assert [k for k in v2 if not k.startswith("layers.0.1.")][:4] == [
        "layers.0.0.projection.weight", "layers.0.0.projection.bias", "layers.0.0.norm.weight", "layers.0.0.norm.bias"]
    assert "layers.3.2.weight" in v2 and len(v2) == 176 - 16  # q and kv: one tensor in each of 8 blocks
    v1 = K.from_pvt(pvt.create_model("pvt_v1_tiny", num_classes=0, cls_token=False, stage_norms=False,
                                     final_norm=False, accelerate=False).state_dict(), "mm_v1")
    assert tuple(v1["layers.3.1.0.pos_embed"].shape) == (1, 49, 512)
    assert "layers.0.1.2.ffn.layers.3.weight" in v1 and "layers.0.1.3.norm1.weight" not in v1  # 2 blocks: 1, 2
    assert not any(k.startswith("layers.0.2") for k in v1)


def test_export_to_mm_and_back(tmp_path, perturb):
    """``export_weights(..., "mmdet")``: v2 keeps every backbone tensor; v1 loses what their backbone lacks
    (head, class token and its position slot, final LayerNorm), with a note; B2-Li and ablations are refused."""
    torch.manual_seed(0)
    b0 = perturb(pvt.create_model("pvt_v2_b0", num_classes=4, accelerate=False))
    done = export_weights(b0, "mmseg", tmp_path / "b0.pth")
    assert done.notes[0].startswith("OpenMMLab's PVT v2 backbone has no classifier head: dropped 2 tensors")
    assert "LayerNorm eps: OpenMMLab's backbone uses 1e-06 everywhere" in done.notes[1]
    raw = torch.load(tmp_path / "b0.pth", weights_only=True)
    assert set(raw) == {"state_dict", "meta"} and len(raw["state_dict"]) == 2 * 160
    assert all(raw["state_dict"][f"backbone.{k}"] is v for k, v in raw["state_dict"].items() if k.startswith("layers."))
    assert raw["meta"]["pvt"]["variant"] == "pvt_v2_b0"
    back = create_pretrained(None, tmp_path / "b0.pth", num_classes=0)
    sd = {k: v for k, v in b0.state_dict().items() if not k.startswith("head.")}
    assert set(back.state_dict()) == set(sd) and all(torch.equal(back.state_dict()[k], v) for k, v in sd.items())

    v1 = perturb(pvt.create_model("pvt_v1_tiny", num_classes=4, accelerate=False))
    done = export_weights(v1, "mmdet", tmp_path / "v1.pth")
    assert done.notes[0] == (
        "OpenMMLab's PVT v1 backbone has no classifier head, class token, LayerNorm after its stages: dropped 5 "
        "tensors (head.weight, head.bias, stages.3.cls_token, stages.3.norm.weight, stages.3.norm.bias) and the "
        "class slot of the last position embedding")
    with pytest.warns(UserWarning, match="without a class token"):
        back = create_pretrained(None, tmp_path / "v1.pth", num_classes=0)
    assert torch.equal(back.stages[3].pos_embed, v1.stages[3].pos_embed[:, 1:])
    assert torch.equal(back.stages[2].blocks[1].attn.kv.weight, v1.stages[2].blocks[1].attn.kv.weight)
    for name, match in (("pvt_v2_b2_li", "no linear spatial-reduction attention"), ("pvt_v1_tiny", "not a mix")):
        with torch.device("meta"):
            m = pvt.create_model(name, accelerate=False, **({"conv_ffn": True} if name == "pvt_v1_tiny" else {}))
        with pytest.raises(ValueError, match=match):
            export_weights(m, "mmdet", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------ mmdetection's two loading paths, as facts
# mmdet isn't a test dependency; these reproduce, from mmdetection's source, what each path does with a file.
_OFFICIAL_PREFIXES = ("head", "norm", "cls_token", "pos_embed", "patch_embed", "block")


def _mmdet_init_weights(path, backbone: nn.Module) -> set[str]:
    """``PyramidVisionTransformer.init_weights`` with ``init_cfg=dict(type='Pretrained', checkpoint=path)``
    (mmdet/models/backbones/pvt.py, open-mmlab/mmdetection): ``checkpoint['state_dict']`` if present, else
    ``checkpoint['model']``, else the checkpoint; ``pvt_convert`` (``convert_weights=True``, the default)
    renames the official names (``patch_embed1.``, ``block1.``, ``norm1``, ``pos_embed1``; ``head``,
    ``norm.``, ``cls_token`` dropped) and passes every other name through unchanged; mmengine's
    ``load_state_dict(backbone, sd, strict=False)`` loads the names and shapes that match. Returns the
    backbone's names that were loaded."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    sd = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    assert not any(k.startswith(_OFFICIAL_PREFIXES) for k in sd)  # the pass-through branch only
    own = backbone.state_dict()
    loaded = {k for k, v in sd.items() if k in own and own[k].shape == v.shape}
    backbone.load_state_dict({k: sd[k] for k in loaded}, strict=False)
    return loaded


def _mmengine_load_from(path, detector: nn.Module) -> set[str]:
    """``load_from=path``: mmengine's runner loads ``checkpoint['state_dict']`` (``module.`` prefixes
    removed) into the whole detector with ``strict=False``. Returns the detector's names that were loaded."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    own = detector.state_dict()
    loaded = {k for k, v in sd.items() if k in own and own[k].shape == v.shape}
    detector.load_state_dict({k: sd[k] for k in loaded}, strict=False)
    return loaded


@pytest.mark.parametrize("name,backbone,layout", CASES)
def test_mmdet_export_fills_the_backbone_through_init_cfg_and_load_from(name, backbone, layout, tmp_path, perturb):
    """``--to mmdet`` loads every backbone tensor through both of mmdetection's paths (the issue: through
    ``init_cfg`` the old file loaded 0 of 160), and both give our maps; the file reads back in pvt."""
    torch.manual_seed(0)
    ours = perturb(pvt.create_model(name, num_classes=0, accelerate=False, layer_norm_eps=EPS, embed_norm_eps=EPS,
                                    **backbone))
    export_weights(ours, "mmdet", tmp_path / "bb.pth")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = ours.forward_intermediates(x, intermediates_only=True)

    theirs = MMBackbone(ours.config).eval()
    assert _mmdet_init_weights(tmp_path / "bb.pth", theirs) == set(theirs.state_dict())
    detector = nn.Module()
    detector.backbone, detector.neck = MMBackbone(ours.config).eval(), nn.Conv2d(256, 256, 1)
    loaded = _mmengine_load_from(tmp_path / "bb.pth", detector)
    assert loaded == {k for k in detector.state_dict() if k.startswith("backbone.")}
    with torch.no_grad():
        for m in (theirs, detector.backbone):
            assert max((a - b).abs().max().item() for a, b in zip(m(x), ref)) < 1e-4
    # the official layout (what mmdet's own PVT configs name in init_cfg) goes through pvt_convert's renames:
    # not reproduced here; the old --to mmdet file (backbone.* only) loaded nothing through init_cfg
    old = {k: v for k, v in torch.load(tmp_path / "bb.pth", weights_only=True)["state_dict"].items()
           if k.startswith("backbone.")}
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    assert _mmdet_init_weights(tmp_path / "old.pth", MMBackbone(ours.config)) == set()
    back = create_pretrained(None, tmp_path / "bb.pth", num_classes=0)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())
