"""``hubconf.py``: ``torch.hub.load(checkout, name, source="local", pretrained=...)`` for every variant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import pvt
from pvt.weights import keys as K
from pvt.weights.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
SLOW = {"pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5", "pvt_v1_medium", "pvt_v1_large", "mit_b3", "mit_b4", "mit_b5"}


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_variant_is_an_entry_point():
    """What ``torch.hub.list`` shows (it reads GitHub repositories only): the public callables."""
    hub = _hubconf()
    assert sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")) == sorted(
        pvt.list_models())
    assert hub.dependencies == ["torch", "torchvision", "safetensors", "huggingface_hub"]
    assert hub.pvt_v2_b2_li.__doc__.startswith("PVT v2-B2-Li (pvt_v2_b2_li): pvt.create_model('pvt_v2_b2_li', "
                                               "pretrained=...")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in pvt.list_models()])
def test_load_every_variant_with_its_weights(name, tmp_path):
    """``pretrained`` a path: the weights are the file's (the variant, head and options as create_model's)."""
    torch.manual_seed(0)
    src = pvt.create_model(name, num_classes=5, accelerate=False)
    if name.startswith("pvt_v1"):  # another format than the own one: the official release layout
        torch.save({"model": K.to_official(src.state_dict())}, tmp_path / "w.pth")
        path = tmp_path / "w.pth"
    else:
        path = save_model(src, tmp_path / "w.safetensors")
    m = torch.hub.load(str(ROOT), name, source="local", pretrained=str(path))
    assert isinstance(m, pvt.PyramidVisionTransformer) and m.variant_name == name and m.num_classes == 5
    assert all(torch.equal(m.state_dict()[k], v) for k, v in src.state_dict().items())


def test_options_and_random_weights():
    f = torch.hub.load(str(ROOT), "pvt_v2_b0", source="local", features_only=True, out_indices=(-2, -1))
    assert f.feature_info.channels() == [160, 256]
    r = torch.hub.load(str(ROOT), "pvt_v2_b0", source="local", pretrained=False, num_classes=0)
    assert r.num_classes == 0 and r(torch.randn(1, 3, 64, 64)).shape == (1, 256)


def test_pretrained_true_means_the_published_weights(monkeypatch, tmp_path):
    """``pretrained=True`` asks the hub for the variant's published weights (here: no network, so the
    error names the repository it tried)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for name, repo in (("pvt_v2_b0", "timm/pvt_v2_b0.in1k"), ("pvt_v1_tiny", "Zetatech/pvt-tiny-224")):
        with pytest.raises(ValueError, match=f"cannot fetch hf-hub:{repo}: no network was reachable"):
            torch.hub.load(str(ROOT), name, source="local", pretrained=True)


def test_docstring_examples_are_calls_torch_hub_accepts():
    """The module doc's examples: torch.hub.list takes no ``source`` (GitHub only), so the doc does not call it
    so; ``python hubconf.py`` prints the entry points instead."""
    import inspect
    import subprocess
    import sys

    assert "source" not in inspect.signature(torch.hub.list).parameters
    doc = _hubconf().__doc__
    assert "torch.hub.list(" not in doc and 'torch.hub.load("path/to/this/checkout", "pvt_v2_b2", source="local"' in doc
    out = subprocess.run([sys.executable, str(ROOT / "hubconf.py")], capture_output=True, text=True, check=True)
    assert out.stdout.split() == pvt.list_models()
