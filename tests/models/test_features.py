"""PVT as a backbone in other people's models: ``create_model(name, features_only=True, out_indices=...)``
(:class:`pvt.models.features.PVTFeatures`) and ``forward_intermediates``."""

from __future__ import annotations

import pytest
import torch

import pvt
from pvt.models.features import PVTFeatures
from pvt.models.model import stage_indices
from pvt.weights.checkpoint import save_model

SIZES = [(67, 45), (97, 131), (64, 64)]


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return pvt.create_model("pvt_v2_b0", num_classes=0, accelerate=False).eval()


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny", "pvt_v2_b2_li"])
@pytest.mark.parametrize("size", SIZES)
def test_selected_maps_at_odd_sizes(name, size):
    """The maps are the full model's maps of the selected stages (same values), with the shapes the
    stride rule gives: v2 ceil(H / r), v1 floor(H / r); feature_info describes exactly those maps."""
    torch.manual_seed(0)
    full = pvt.create_model(name, num_classes=0, accelerate=False).eval()
    feats = PVTFeatures(full, out_indices=(1, 2, 3))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        got, ref = feats(x), full.forward_pyramid(x)
    r = (8, 16, 32)
    rnd = (lambda n, k: -(-n // k)) if full.config.overlap_patch_embed else (lambda n, k: n // k)
    assert [tuple(t.shape) for t in got] == [(2, c, rnd(size[0], k), rnd(size[1], k))
                                             for c, k in zip(full.config.embed_dims[1:], r)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref[1:]))
    assert feats.feature_info.channels() == list(full.config.embed_dims[1:])
    assert feats.feature_info.reduction() == [8, 16, 32]
    assert [f["module"] for f in feats.feature_info] == ["stages.1", "stages.2", "stages.3"]


def test_create_model_features_only_with_negative_and_int_indices(b0, tmp_path):
    """Negative indices count from the end; an int n takes the last n; stages after the last selected one
    are not kept (nor run); weights load into it as into the plain model."""
    m = pvt.create_model("pvt_v2_b0", features_only=True, out_indices=(0, -2))
    assert isinstance(m, PVTFeatures) and m.out_indices == (0, 2) and len(m.stages) == 3
    assert m.feature_info.channels() == [32, 160] and m.feature_info.reduction() == [4, 16]
    assert list(m.state_dict()) == [k for k in b0.state_dict() if not k.startswith("stages.3.")]
    assert pvt.create_model("pvt_v2_b0", features_only=True, out_indices=2).out_indices == (2, 3)
    assert pvt.create_model("pvt_v2_b0", features_only=True).feature_info.channels() == [32, 64, 160, 256]
    save_model(b0, tmp_path / "b0.safetensors")
    loaded = pvt.create_model("pvt_v2_b0", features_only=True, out_indices=(-1,), pretrained=tmp_path / "b0.safetensors")
    x = torch.randn(1, 3, 75, 61)
    with torch.no_grad():
        (got,) = loaded.eval()(x)  # accelerated stages: the CPU path's float rounding
        assert (got - b0.forward_pyramid(x)[3]).abs().max().item() < 1e-4
    out = loaded.train()(x)
    out[0].sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_stage_indices_and_errors():
    assert stage_indices(4, None) == [0, 1, 2, 3]
    assert stage_indices(4, (-1, 0)) == [0, 3] and stage_indices(4, 1) == [3]
    for bad, match in (((0, -4), "at most once"), ((4,), "out of range"), ((-5,), "out of range"), (0, "last n"),
                       (5, "last n"), ((), "at least one"), ("12", "an int or a sequence"), ((1.0,), "out of range")):
        with pytest.raises(ValueError, match=match):
            stage_indices(4, bad)
    with pytest.raises(ValueError, match="pass features_only=True"):
        pvt.create_model("pvt_v2_b0", out_indices=(1, 2))
    with pytest.raises(ValueError, match="has no head; num_classes=10"):
        pvt.create_model("pvt_v2_b0", features_only=True, num_classes=10)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_forward_intermediates(name):
    """Every stage's map and the final output (what forward_features gives and the head pools: the logits
    follow from it); selected stages in stage order; ``stop_early`` runs no stage past the last selected
    one and returns that stage's map as the final output."""
    torch.manual_seed(0)
    m = pvt.create_model(name, num_classes=5, accelerate=False).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        final, maps = m.forward_intermediates(x)
        assert torch.equal(m.forward_head(final), m(x)) and torch.equal(final, m.forward_features(x))
        assert all(torch.equal(a, b) for a, b in zip(maps, m.forward_pyramid(x)))
        if m.config.cls_token:  # tokens, class token first: (B, 1 + h*w, C)
            assert final.shape == (2, maps[-1].shape[2] * maps[-1].shape[3] + 1, m.num_features)
            assert torch.equal(final[:, 1:].transpose(1, 2).reshape(maps[-1].shape), maps[-1])
        else:
            assert torch.equal(final, maps[-1])
        fin1, sel = m.forward_intermediates(x, (-1, 1))
        assert torch.equal(fin1, final) and [s.shape for s in sel] == [maps[1].shape, maps[3].shape]
        ran = []
        hooks = [s.register_forward_hook(lambda mod, i, o, k=k: ran.append(k)) for k, s in enumerate(m.stages)]
        fin0, (first,) = m.forward_intermediates(x, (0,), stop_early=True)
        only = m.forward_intermediates(x, [1], intermediates_only=True)
        for h in hooks:
            h.remove()
    assert ran == [0, 0, 1] and torch.equal(first, maps[0]) and torch.equal(fin0, maps[0])
    assert isinstance(only, list) and torch.equal(only[0], maps[1])
    with pytest.raises(ValueError, match="output_fmt='NCHW'"):
        m.forward_intermediates(x, output_fmt="NLC")