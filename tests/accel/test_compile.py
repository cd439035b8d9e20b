"""accelerate(model, compile=True): the plain forward under torch.compile (Inductor, freezing) gives the
eager model's logits, and without a working compiler the model runs as before with one line saying why."""

import pytest
import torch

from pvt.accel import accelerate
from pvt.accel import compile as compile_mod
from pvt.models.config import PVTConfig
from pvt.models.model import PyramidVisionTransformer

TINY = PVTConfig(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2), mlp_ratios=(2, 2, 2, 2),
                 num_classes=10)


def _tiny() -> PyramidVisionTransformer:
    torch.manual_seed(0)
    return PyramidVisionTransformer(TINY).eval()


@pytest.mark.slow  # Inductor builds C++ kernels: ~20-60 s on 2 cores
def test_compiled_model_matches_the_plain_one(tmp_path, monkeypatch):
    if compile_mod.compiler_missing():
        pytest.skip(compile_mod.compiler_missing())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    accelerate(model, compile=True)
    assert compile_mod.is_compiled(model) and model.acceleration.note == ""
    with torch.inference_mode():
        out = model(x)
    assert (out - ref).abs().max().item() < 1e-4
    assert any((tmp_path / "inductor").rglob("*.so"))  # the compiled kernels are cached there


def test_compile_without_a_compiler_falls_back_with_one_line(monkeypatch):
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)
    model = _tiny()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    accelerate(model, compile=True)
    note = model.acceleration.note
    assert not compile_mod.is_compiled(model)
    assert "no C++ compiler" in note and "accelerated eager model runs" in note and "\n" not in note
    with torch.inference_mode():
        assert (model(x) - ref).abs().max().item() < 1e-4


def test_cache_folder_follows_the_user(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("PVT_CACHE", str(tmp_path))
    assert compile_mod.inductor_cache_dir() == tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_mod.inductor_cache_dir() == tmp_path / "mine"
