"""Parity with the reference implementations: timm's and HF transformers' models with random weights
are saved in their own formats, loaded here, and must give the same logits and the same four
feature maps (max abs difference <= 1e-4 in float32).

The reference models initialise biases to zero and LayerNorms to ones; those tensors (every 1-D
or constant tensor) are perturbed first (the ``perturb`` fixture of ``conftest.py``), so that a swapped
or dropped tensor changes the outputs.
Run with ``-s`` to print the measured differences.
"""

from __future__ import annotations

import pytest
import torch

import pvt
from pvt.weights import keys as K
from pvt.weights import pvt_to_hf_config

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SLOW = {"pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5", "pvt_v1_medium", "pvt_v1_large"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


V2 = _params(pvt.list_models("pvt_v2_*"))
V1 = _params(pvt.list_models("pvt_v1_*"))


def max_diffs(ref_logits, ref_maps, model, x) -> tuple[float, float]:
    """(max |logits diff|, max |feature diff| over the four maps) of ``model`` against a reference."""
    with torch.no_grad():  # one pass: model(x) is forward_head(final) of this same pass
        final, maps = model.forward_intermediates(x)
        logits = model.forward_head(final)
    assert [tuple(m.shape) for m in maps] == [tuple(m.shape) for m in ref_maps]
    dl = (logits - ref_logits).abs().max().item() if ref_logits is not None else 0.0
    df = max((a - b).abs().max().item() for a, b in zip(maps, ref_maps))
    return dl, df


def report(name, source, size, dl, df):
    print(f"PARITY {name:14s} {source:22s} {size:8s} logits {dl:.2e} features {df:.2e}")
    assert dl <= TOL and df <= TOL, (name, source, size, dl, df)


def hf_config(name: str, **kw):
    """transformers' ``PvtV2Config`` / ``PvtConfig`` of variant ``name`` (from ``pvt_to_hf_config``)."""
    fields = pvt_to_hf_config(pvt.get_variant(name).config)
    kind = fields.pop("model_type")
    return {"pvt_v2": transformers.PvtV2Config, "pvt": transformers.PvtConfig}[kind](**fields, **kw)


@pytest.mark.parametrize("name", V2)
def test_v2_matches_timm(name, tmp_path, perturb):
    from safetensors.torch import save_file

    ref = perturb(timm.create_model(name, pretrained=False))
    sd = ref.state_dict()
    save_file(sd, tmp_path / "timm.safetensors")
    torch.save(sd, tmp_path / "timm.pth")
    # the official layout, wrapped as the official training code saves it
    torch.save({"model": K.to_official(K.from_timm(sd)), "epoch": 299}, tmp_path / "official.pth")

    sizes = {"224x224": torch.randn(1, 3, 224, 224), "97x131": torch.randn(1, 3, 97, 131)}
    expected = {}
    with torch.no_grad():
        for size, x in sizes.items():
            final, maps = ref.forward_intermediates(x)
            expected[size] = (ref.forward_head(final), maps)
    # the container formats do not depend on the variant: in the default run B0 and B2-Li cover them
    formats = ["timm.safetensors"]
    if name in SLOW or name in ("pvt_v2_b0", "pvt_v2_b2_li"):
        formats += ["timm.pth", "official.pth"]
    for fname in formats:
        model = pvt.create_model(name, pretrained=tmp_path / fname).eval()
        for size, x in sizes.items():
            if size != "224x224" and fname != "timm.safetensors":
                continue
            report(name, fname, size, *max_diffs(*expected[size], model, x))


@pytest.mark.parametrize("name", V2)
def test_v2_matches_hf(name, tmp_path, perturb):
    ref = perturb(transformers.PvtV2ForImageClassification(hf_config(name, num_labels=1000)))
    ref.save_pretrained(tmp_path / "cls")
    ref.pvt_v2.save_pretrained(tmp_path / "bare")  # PvtV2Model: no head, no "pvt_v2." prefix
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
    model = pvt.create_model(name, pretrained=tmp_path / "cls").eval()
    assert model.config.embed_norm_eps == model.config.layer_norm_eps == 1e-6  # HF's eps everywhere
    report(name, "hf PvtV2ForImageCls", "224x224", *max_diffs(out.logits, out.hidden_states, model, x))
    bare = pvt.create_model(name, pretrained=tmp_path / "bare").eval()
    assert bare.num_classes == 0
    report(name, "hf PvtV2Model", "224x224", *max_diffs(None, out.hidden_states, bare, x))


def _hf_v1_maps(out, name: str, batch: int) -> list[torch.Tensor]:
    """HF v1 gives per-block hidden states; each stage's last one (and the final normed tokens,
    class token dropped) are the four maps at 56, 28, 14 and 7."""
    depths = pvt.get_variant(name).config.depths
    dims = pvt.get_variant(name).config.embed_dims
    hs = out.hidden_states
    maps = []
    for i, side in enumerate((56, 28, 14)):
        t = hs[sum(depths[: i + 1]) - 1]
        maps.append(t.reshape(batch, side, side, dims[i]).permute(0, 3, 1, 2))
    maps.append(hs[-1][:, 1:].reshape(batch, 7, 7, dims[3]).permute(0, 3, 1, 2))
    return maps


@pytest.mark.parametrize("name", V1)
def test_v1_matches_hf(name, tmp_path, perturb):
    ref = perturb(transformers.PvtForImageClassification(hf_config(name, num_labels=1000)))
    ref.save_pretrained(tmp_path / "cls")
    ref.pvt.save_pretrained(tmp_path / "bare")
    sd = K.from_hf_v1(ref.state_dict())
    torch.save({"model": K.to_official(sd)}, tmp_path / "official.pth")
    x = torch.randn(1, 3, 224, 224)  # HF's v1 runs at 224 only
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
    maps = _hf_v1_maps(out, name, 1)
    model = pvt.create_model(name, pretrained=tmp_path / "cls").eval()
    report(name, "hf PvtForImageCls", "224x224", *max_diffs(out.logits, maps, model, x))
    bare = pvt.create_model(name, pretrained=tmp_path / "bare").eval()
    assert bare.num_classes == 0
    report(name, "hf PvtModel", "224x224", *max_diffs(None, maps, bare, x))
    # the official v1 names, with HF's LayerNorm eps (1e-6) since these weights come from HF
    off = pvt.create_model(name, pretrained=tmp_path / "official.pth", embed_norm_eps=1e-6).eval()
    report(name, "official.pth (v1)", "224x224", *max_diffs(out.logits, maps, off, x))


def test_eps_matters_at_this_tolerance(tmp_path, perturb):
    """HF's 1e-6 in the patch-embedding/SR LayerNorms is carried over from config.json: loading the
    same weights with the official 1e-5 moves the outputs measurably."""
    ref = perturb(transformers.PvtV2ForImageClassification(hf_config("pvt_v2_b0", num_labels=1000)))
    ref.save_pretrained(tmp_path / "cls")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
    good = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "cls").eval()
    off = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "cls", embed_norm_eps=1e-5).eval()
    dl_good, _ = max_diffs(out.logits, out.hidden_states, good, x)
    dl_off, df_off = max_diffs(out.logits, out.hidden_states, off, x)
    assert dl_good < 1e-5
    assert df_off > 10 * max(dl_good, 1e-7)
