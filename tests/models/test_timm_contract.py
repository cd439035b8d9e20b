"""timm's model contract, held against every pvt classification model.

The checks are those timm's own test suite (``tests/test_models.py``: ``test_model_forward``,
``test_model_backward``, ``test_model_default_cfgs`` / ``_non_std``, ``test_model_forward_features``,
``test_model_forward_intermediates``) runs on every timm model, written again here against pvt's models
(timm's test file is not installed with timm), plus timm's own helpers used on a pvt model: its
``FeatureInfo`` and ``FeatureGetterNet`` wrappers and ``resolve_data_config`` / ``create_transform``.

Every variant runs with one block per stage (``depths=(1, 1, 1, 1)``: its own widths, heads, reduction
ratios and switches, in a fraction of the time); ``pvt_v2_b0`` and ``pvt_v1_tiny`` also run whole. All
of them are configured for 64x64 input (``img_size=64``: ``pretrained_cfg``'s input size and v1's
position-embedding grid), so the checks at the default input size stay cheap.
"""

from __future__ import annotations

import math

import pytest
import torch

import pvt

timm = pytest.importorskip("timm")
from timm.layers import get_channel_dim, get_spatial_dim  # noqa: E402

SMALL = {"img_size": 64}
SHALLOW = {"depths": (1, 1, 1, 1), **SMALL}
CASES = [pytest.param(n, SHALLOW, id=f"{n}-shallow") for n in pvt.list_models()] + [
    pytest.param("pvt_v2_b0", SMALL, id="pvt_v2_b0"),
    pytest.param("pvt_v1_tiny", SMALL, id="pvt_v1_tiny"),
]


def create(name, kw, **more):
    torch.manual_seed(0)
    return pvt.create_model(name, **kw, **more)


def input_size(model, target):
    """timm's ``_get_input_size``: the default input, or ``min_input_size`` when the default is larger
    than ``target``."""
    cfg = model.default_cfg
    size = cfg["input_size"]
    if cfg.get("fixed_input_size"):
        return size
    if target and max(size) > target:
        return cfg.get("min_input_size") or tuple(min(s, target) for s in size)
    return size


@pytest.mark.parametrize("name,kw", CASES)
def test_model_forward(name, kw):
    model = create(name, kw).eval()
    x = torch.randn(1, *input_size(model, 384))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000) and not torch.isnan(out).any()
        # timm's training scripts: the head on forward_features is the forward pass
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), out, rtol=0, atol=1e-6)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kw", CASES[:: len(CASES) // 4 or 1])
def test_model_backward(name, kw):
    model = create(name, kw, num_classes=42).train()
    out = model(torch.randn(2, *input_size(model, 128)))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert out.shape == (2, 42) and not torch.isnan(out).any()


@pytest.mark.parametrize("name,kw", CASES)
def test_model_default_cfgs(name, kw):
    """``test_model_default_cfgs`` (NCHW models) and ``test_model_default_cfgs_non_std`` (class-token
    models, whose ``forward_features`` is NLC tokens as a ViT's)."""
    model = create(name, kw).eval()
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and cfg["num_classes"] == 1000
    state_dict = model.state_dict()
    x = torch.randn(1, *cfg["input_size"])
    fmt = model.output_fmt
    assert fmt == ("NLC" if model.config.cls_token else "NCHW")
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        if fmt == "NCHW":
            h, w = get_spatial_dim(fmt)
            assert (feats.shape[h], feats.shape[w]) == tuple(cfg["pool_size"]) == (2, 2)
        else:  # the class token and one token per cell of the last map
            assert feats.shape[1] == 1 + math.prod(cfg["pool_size"]) == 1 + 2 * 2
        assert feats.shape[get_channel_dim(fmt)] == model.num_features

        model.reset_classifier(0)
        assert model.num_classes == 0 and model.get_classifier().__class__ is torch.nn.Identity
        out = model(x)
        assert out.shape == pre.shape
        torch.testing.assert_close(out, pre, rtol=0, atol=1e-6)

        model.reset_classifier(0, "")
        out = model(x)
        assert out.shape == feats.shape
        model = create(name, kw, num_classes=0, global_pool="").eval()
        assert model(x).shape == feats.shape

    for key in ("classifier", "first_conv"):
        assert cfg[key] + ".weight" in state_dict, f"{key} {cfg[key]!r} names no parameter"


@pytest.mark.parametrize("name,kw", CASES)
def test_model_forward_features(name, kw):
    """``features_only``: a map per stage, channels and strides as ``feature_info`` says."""
    model = create(name, kw, features_only=True).eval()
    channels, reduction = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 4 and reduction == [4, 8, 16, 32]
    size = input_size(model, 96)
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reduction, outs):
        assert o.shape[1] == c and o.shape[0] == 1 and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1


@pytest.mark.parametrize("name,kw", CASES)
def test_model_forward_intermediates(name, kw):
    model = create(name, kw).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))  # timm's class on our list
    assert info.channels() == model.feature_info.channels() == list(model.config.embed_dims)
    assert info.module_name() == model.feature_info.module_name() == [f"stages.{i}" for i in range(4)]
    size = input_size(model, 96)
    x = torch.randn(1, *size)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(maps) == 4
        for c, r, o in zip(info.channels(), info.reduction(), maps):
            assert o.shape[1] == c and not torch.isnan(o).any()
            assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_timm_feature_getter_prunes_and_extracts(name):
    """timm's ``FeatureGetterNet`` (what ``features_only`` is for timm's newer models) around a pvt model:
    it prunes the stages and head the selected maps do not need, and the maps are the full model's."""
    from timm.models._features import FeatureGetterNet

    full = create(name, SHALLOW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = full.forward_pyramid(x)
    model = create(name, SHALLOW).eval()
    net = FeatureGetterNet(model, out_indices=(0, 2))
    assert len(model.stages) == 3 and model.num_classes == 0 and model.global_pool == ""
    assert net.feature_info.channels() == [model.config.embed_dims[0], model.config.embed_dims[2]]
    assert net.feature_info.reduction() == [4, 16]
    with torch.no_grad():
        outs = net(x)
        assert [o.shape for o in outs] == [ref[0].shape, ref[2].shape]
        assert all(torch.equal(a, b) for a, b in zip(outs, (ref[0], ref[2])))
        # after pruning, forward_features is the last kept stage's map
        assert torch.equal(model.forward_features(x), ref[2]) and model.num_features == ref[2].shape[1]


def test_timm_data_config_reads_the_evaluation_transform():
    """``timm.data.resolve_data_config(model=...)`` finds pvt's own evaluation transform (``pvt predict``'s:
    bicubic resize to 256, 224 centre crop, ImageNet normalisation) and timm builds it."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = pvt.create_model("pvt_v2_b0", depths=(1, 1, 1, 1))
    cfg = resolve_data_config(model=model)
    assert cfg == {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                   "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}
    out = create_transform(**cfg)(Image.new("RGB", (320, 300), (255, 0, 0)))
    assert out.shape == (3, 224, 224)
    assert out[0].mean().item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)


def test_global_pool_choices_and_errors():
    v2 = pvt.create_model("pvt_v2_b0", depths=(1, 1, 1, 1)).eval()
    v1 = pvt.create_model("pvt_v1_tiny", depths=(1, 1, 1, 1)).eval()
    assert (v2.global_pool, v2.output_fmt, v1.global_pool, v1.output_fmt) == ("avg", "NCHW", "token", "NLC")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = v1.forward_features(x)
        assert torch.equal(v1.forward_head(tokens, pre_logits=True), tokens[:, 0])
        v1.reset_classifier(3, "avg")  # a class-token model may also average its patch tokens
        torch.testing.assert_close(v1.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
        assert v1(x).shape == (2, 3)
        fmap = v2.forward_features(x)
        torch.testing.assert_close(v2.forward_head(fmap, pre_logits=True), fmap.mean((2, 3)))
    with pytest.raises(ValueError, match="needs a class token"):
        v2.reset_classifier(0, "token")
    with pytest.raises(ValueError, match="pass num_classes=0 with it"):
        v2.reset_classifier(10, "")
    with pytest.raises(ValueError, match="one of"):
        pvt.create_model("pvt_v2_b0", depths=(1, 1, 1, 1), global_pool="max")


def test_feature_info_accessors():
    fi = pvt.create_model("pvt_v2_b0", depths=(1, 1, 1, 1)).feature_info
    assert fi.channels() == [32, 64, 160, 256] and fi.reduction(1) == 8 and fi.channels([0, 3]) == [32, 256]
    assert fi.module_name(-1) == "stages.3"
    assert fi.get_dicts(keys=("num_chs", "reduction"), idx=[0]) == [{"num_chs": 32, "reduction": 4}]
    assert fi.get_dicts()[2] == {"num_chs": 160, "reduction": 16, "module": "stages.2", "index": 2}
    assert fi[0]["num_chs"] == 32 and len(fi) == 4
