"""pvt.accel.set_precision: one switch for every PVT inside a model (a classifier, or a dense model's
backbone), reporting what it picked; GPUs keep the model and run it under autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch

import pvt
from pvt.accel import capability, inference_autocast, is_accelerated, set_precision
from pvt.accel.quant import is_quantized


def test_a_dense_models_backbone_takes_the_precision(monkeypatch):
    from pvt.dense.zoo import create_dense_model

    model = create_dense_model("semfpn_pvt_v2_b0", num_classes=3).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        ref = model(x)
    bodies = [m for m in model.modules() if isinstance(m, pvt.PyramidVisionTransformer)]
    assert len(bodies) == 1
    picked, reason = set_precision(model, "bf16")
    assert picked == "bfloat16" and reason.startswith("requested")  # and why it is slow on CPUs without bf16
    assert bodies[0].acceleration.precision == "bfloat16"
    with torch.inference_mode():
        out = model(x)
    assert out.dtype == ref.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
    assert set_precision(model, "int8")[0] == "int8" and is_quantized(bodies[0])
    assert set_precision(model, "float32")[0] == "float32" and bodies[0].acceleration.precision == "float32"
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-4)
    monkeypatch.setattr(capability, "cpu_flags", lambda: frozenset({"avx2"}))
    assert set_precision(model, "auto")[0] == "float32"


def test_plain_models_gpus_and_errors():
    model = pvt.create_model("pvt_v2_b0")  # plain
    assert set_precision(model, "float32")[0] == "float32"
    assert is_accelerated(model) and model.acceleration.precision == "float32"  # accelerated for inference
    assert set_precision(model, "bfloat16")[0] == "bfloat16"
    assert model.acceleration.precision == "bfloat16"
    cuda = pvt.create_model("pvt_v2_b0")
    assert set_precision(cuda, "auto", device="cuda") == ("bfloat16", "auto: cuda runs bfloat16 under autocast")
    assert cuda.acceleration.precision == "float32"  # the GPU path runs in autocast's dtype
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        assert isinstance(inference_autocast("cuda", "bfloat16"), torch.autocast)  # warns: no CUDA here
    assert not isinstance(inference_autocast("cpu", "bfloat16"), torch.autocast)
    with pytest.raises(ValueError, match="calibration images are for int8"):
        set_precision(model, "bfloat16", calibration=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="holds no Pyramid Vision Transformer"):
        set_precision(torch.nn.Linear(2, 2), "int8")
