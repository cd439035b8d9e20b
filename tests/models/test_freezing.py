"""Freezing for fine-tuning, as mmdetection defines it: ``frozen_stages`` (the first patch embedding, or
the first N stages: no gradients, eval mode while training) and ``norm_eval`` (BatchNorm layers in eval
mode while training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pvt
from pvt.models.features import PVTFeatures


def _grad_owners(model: nn.Module, x: torch.Tensor) -> set[str]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    (sum(o.sum() for o in out) if isinstance(out, list) else out.sum()).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_frozen_stages_receive_no_gradient(name):
    torch.manual_seed(0)
    m = pvt.create_model(name, num_classes=3, drop_path_rate=0.3, frozen_stages=0).train()
    x = torch.randn(2, 3, 64, 64)
    first = {n for n, _ in m.named_parameters() if n.startswith(("stages.0.patch_embed.", "stages.0.pos_embed"))}
    assert len(first) == (5 if name == "pvt_v1_tiny" else 4)
    assert _grad_owners(m, x) == {n for n, _ in m.named_parameters()} - first
    m.set_frozen_stages(2)
    frozen = {n for n, _ in m.named_parameters() if n.startswith(("stages.0.", "stages.1."))}
    assert not any(p.requires_grad for n, p in m.named_parameters() if n in frozen)
    assert _grad_owners(m, x) == {n for n, _ in m.named_parameters()} - frozen
    m.set_frozen_stages(-1)
    assert all(p.requires_grad for p in m.parameters()) and m.frozen_stages == -1
    assert _grad_owners(m, x) == {n for n, _ in m.named_parameters()}


def test_frozen_stages_stay_in_eval_mode():
    """Stochastic depth and dropout are off in frozen stages: two training-mode forwards agree there and
    differ after them; ``train()`` and ``eval()`` keep the rule."""
    torch.manual_seed(0)
    m = pvt.create_model("pvt_v2_b0", num_classes=0, drop_path_rate=0.5, drop_rate=0.2)
    m.set_frozen_stages(2)
    m.eval().train()
    assert not any(mod.training for s in m.stages[:2] for mod in s.modules())
    assert all(mod.training for s in m.stages[2:] for mod in s.modules()) and m.training
    x = torch.randn(2, 3, 64, 64)
    a, b = m.forward_pyramid(x), m.forward_pyramid(x)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[3], b[3])
    m.set_frozen_stages(0)
    assert m.stages[1].training and not m.stages[0].patch_embed.training


def test_norm_eval_keeps_batchnorm_statistics():
    """PVT's own norms are LayerNorms (nothing to keep); a BatchNorm placed in the model stays in eval mode
    while the model trains, and its running statistics do not move."""
    m = pvt.create_model("pvt_v2_b0", num_classes=0, norm_eval=True)
    m.stages[0].extra = nn.BatchNorm2d(4)
    m.train()
    bn = m.stages[0].extra
    assert not bn.training and m.stages[0].blocks[0].training
    before = bn.running_mean.clone()
    bn(torch.randn(8, 4, 3, 3) + 5)
    assert torch.equal(bn.running_mean, before)
    m.norm_eval = False
    assert m.train().stages[0].extra.training


def test_options_reach_features_only_models_and_errors():
    f = pvt.create_model("pvt_v2_b0", features_only=True, out_indices=(1, 2), frozen_stages=1, norm_eval=True,
                         grad_checkpointing=True)
    assert isinstance(f, PVTFeatures) and f.frozen_stages == 1 and f.norm_eval and f.grad_checkpointing
    f.train()
    assert not f.stages[0].training and f.stages[1].training
    assert not any(p.requires_grad for p in f.stages[0].parameters())
    for bad in (5, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"frozen_stages must be an integer in -1 .. 4"):
            pvt.create_model("pvt_v2_b0", frozen_stages=bad)
