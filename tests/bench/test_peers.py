"""pvt.bench.peers: timm's and HF's PVT v2 holding our weights."""

import pytest
import torch

import pvt
from pvt.bench.peers import num_classes, reference_model


@pytest.mark.parametrize("impl", ["timm", "hf"])
def test_reference_models_hold_our_weights(impl):
    pytest.importorskip({"timm": "timm", "hf": "transformers"}[impl])
    ours = pvt.create_model("pvt_v2_b0", num_classes=10).eval()
    ref = reference_model(impl, "pvt_v2_b0", ours)
    assert num_classes(ref) == 10 and not ref.training
    x = torch.randn(1, 3, 96, 64)
    with torch.inference_mode():
        assert (ref(x) - ours(x)).abs().max().item() < 1e-4


def test_reference_model_refusals():
    ours = pvt.create_model("pvt_v1_tiny", embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="unknown implementation 'mmdet'"):
        reference_model("mmdet", "pvt_v1_tiny", ours)
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="PVT v2 models only"):
        reference_model("hf", "pvt_v1_tiny", ours)
