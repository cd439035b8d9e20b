"""Weights out: ``export_weights`` / ``pvt convert --to`` for every format.

* ours -> format -> ours is bit-identical for every format and variant (what the format holds);
* timm and transformers load our exports strictly (no missing or unexpected key) and give our logits
  and maps within 1e-4 (random weights, every bias and LayerNorm perturbed);
* dense runs of this library export their backbone in every layout.
"""

from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch
from safetensors.torch import load_file

import pvt
from pvt.cli import main as cli_main
from pvt.weights import create_pretrained, read_checkpoint
from pvt.weights.checkpoint import save_model
from pvt.weights.writing import EXPORT_FORMATS, Preprocessing, eps_drift, export_weights

TOL = 1e-4
SLOW = {"pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5", "pvt_v1_medium", "pvt_v1_large", "pvt_v2_b1", "pvt_v1_small",
        "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"}
VARIANTS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in pvt.list_models()]
DST = {"pvt": "w.safetensors", "hf": "hf", "timm": "timm", "official": "w.pth", "mmdet": "mm.pth", "mmseg": "mm.pth"}
EPS = {"hf": (1e-6, 1e-6), "mmdet": (1e-6, 1e-6), "mmseg": (1e-6, 1e-6)}  # their models' LayerNorm eps


def _model(name: str, perturb, **kw) -> pvt.PyramidVisionTransformer:
    torch.manual_seed(0)
    return perturb(pvt.create_model(name, accelerate=False, **kw))


def _expected(model: pvt.PyramidVisionTransformer, fmt: str) -> dict[str, torch.Tensor]:
    """What the format holds of the model: everything, or OpenMMLab's backbone."""
    sd = model.state_dict()
    if fmt not in ("mmdet", "mmseg"):
        return sd
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    if model.config.cls_token:  # v1: no class token (nor its position slot), no LayerNorm after a stage
        sd = {k: v for k, v in sd.items() if not k.endswith("cls_token") and not re.match(r"stages\.\d+\.norm\.", k)}
        sd["stages.3.pos_embed"] = sd["stages.3.pos_embed"][:, 1:]
    return sd


@pytest.mark.parametrize("fmt", list(EXPORT_FORMATS))
@pytest.mark.parametrize("name", VARIANTS)
def test_round_trip_is_bit_identical(name, fmt, tmp_path, perturb):
    """Export, read back with the variant inferred: every tensor the format holds is bit-identical, and
    the model is built with the LayerNorm eps of the format's own models. What a format cannot hold
    (timm: v1; OpenMMLab: linear SRA) is a ValueError that writes nothing."""
    model = _model(name, perturb, num_classes=5)
    dst = tmp_path / DST[fmt]
    cfg = model.config
    if (fmt == "timm" and cfg.pos_embed) or (fmt in ("mmdet", "mmseg") and cfg.linear_sra):
        with pytest.raises(ValueError, match="timm implements PVT v2 only|no linear spatial-reduction"):
            export_weights(model, fmt, dst)
        assert not any(tmp_path.iterdir())
        return
    export_weights(model, fmt, dst, class_names=list("abcde"))
    if fmt in ("mmdet", "mmseg"):
        with pytest.warns(UserWarning, match="dense-prediction checkpoint"):
            back = create_pretrained(None, dst, num_classes=0)
    else:
        back = create_pretrained(None, dst)
    assert back.variant_name == name
    want, got = _expected(model, fmt), back.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    eps = EPS.get(fmt, (cfg.layer_norm_eps, cfg.embed_norm_eps))
    assert (back.config.layer_norm_eps, back.config.embed_norm_eps) == eps


def test_timm_loads_our_export_strictly(tmp_path, perturb):
    """timm builds the model from our config.json (``local-dir:``) or takes our file through
    ``pretrained_cfg_overlay``; the keys match exactly and the logits equal ours."""
    timm = pytest.importorskip("timm")
    ours = _model("pvt_v2_b0", perturb)  # 1000 classes: timm's default head
    export_weights(ours, "timm", tmp_path / "b0.safetensors")
    ref = timm.create_model("pvt_v2_b0", pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "b0.safetensors")})
    ref.load_state_dict(load_file(tmp_path / "b0.safetensors"), strict=True)
    small = _model("pvt_v2_b2_li", perturb, num_classes=3)
    pre = Preprocessing(img_size=192, crop_pct=0.9, interpolation="bilinear")
    export_weights(small, "timm", tmp_path / "li", class_names=["cat", "dog", "eel"], preprocessing=pre)
    cfg = json.loads((tmp_path / "li" / "config.json").read_text())
    assert cfg["architecture"] == "pvt_v2_b2_li" and cfg["num_classes"] == 3 and cfg["label_names"] == ["cat", "dog", "eel"]
    li = timm.create_model(f"local-dir:{tmp_path / 'li'}", pretrained=True)
    assert li.pretrained_cfg["input_size"] == (3, 192, 192) and li.pretrained_cfg["crop_pct"] == 0.9
    assert li.pretrained_cfg["interpolation"] == "bilinear" and li.pretrained_cfg["mean"] == [0.485, 0.456, 0.406]
    x = torch.randn(2, 3, 224, 160)
    with torch.no_grad():
        for theirs, mine in ((ref.eval(), ours), (li.eval(), small)):
            d = (theirs(x) - mine(x)).abs().max().item()
            print(f"TIMM {mine.variant_name} logits {d:.2e}")
            assert d <= TOL


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_transformers_load_our_export_without_missing_or_unexpected_keys(name, tmp_path, perturb):
    """The classifier folder: AutoModelForImageClassification takes every tensor (labels and preprocessing
    from our configs) and gives our logits; our own reader gives the same model back with HF's eps."""
    transformers = pytest.importorskip("transformers")
    ours = _model(name, perturb, num_classes=4)
    done = export_weights(ours, "hf", tmp_path / "hf", class_names=list("wxyz"),
                          preprocessing=Preprocessing(img_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    hf, info = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.config.id2label == {0: "w", 1: "x", 2: "y", 3: "z"}
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")  # timm's evaluation transform
    assert proc.data_config == {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3,
                                "std": (0.25,) * 3, "crop_pct": 0.875, "crop_mode": "center"}
    own = transformers.PvtImageProcessorPil.from_pretrained(tmp_path / "hf")  # the same recipe in its fields
    assert (list(own.image_mean), list(own.image_std), own.size["shortest_edge"], own.crop_size["height"],
            own.do_center_crop) == ([0.5] * 3, [0.25] * 3, 256, 224, True)  # 224 / 0.875, then the crop
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs = hf.eval()(x).logits
        same_eps = create_pretrained(None, tmp_path / "hf").eval()(x)
        d, drift = (theirs - same_eps).abs().max().item(), (theirs - ours(x)).abs().max().item()
    print(f"HF {name} logits {d:.2e}; against the 1e-5-eps original {drift:.2e}")
    assert d <= TOL and drift <= TOL
    measured = eps_drift(ours, 1e-6, 1e-6)[0]
    assert [n for n in done.notes if n.startswith("LayerNorm eps")] == [
        "LayerNorm eps: HF transformers uses 1e-06 everywhere, this model 1e-05 in the patch-embedding and "
        f"spatial-reduction norms: the exported model's logits differ from this model's by up to {measured:.2e} "
        f"(largest |value| {eps_drift(ours, 1e-6, 1e-6)[1]:.3g}; two random 224x224 images)"]


def test_transformers_backbone_takes_our_headless_export(tmp_path, perturb):
    """A headless export is the bare model (PvtV2Model names, every stage an output): PvtV2Backbone and
    AutoModel load it without a missing or unexpected key and give our four maps."""
    transformers = pytest.importorskip("transformers")
    ours = _model("pvt_v2_b0", perturb, num_classes=0, layer_norm_eps=1e-6, embed_norm_eps=1e-6)
    assert export_weights(ours, "hf", tmp_path / "hf").notes == []  # HF's eps: nothing drifts
    bb, info = transformers.PvtV2Backbone.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    am, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(am).__name__ == "PvtV2Model" and not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        maps = bb.eval()(x).feature_maps
        ref = ours.forward_pyramid(x)
    assert len(maps) == 4 and max((a - b).abs().max().item() for a, b in zip(maps, ref)) <= TOL


def test_eps_drift_is_measured_on_the_model(perturb):
    m = _model("pvt_v2_b0", perturb)
    assert eps_drift(m, m.config.layer_norm_eps, m.config.embed_norm_eps) == (0.0, pytest.approx(
        eps_drift(m, 1e-6, 1e-6)[1]))
    diff, _ = eps_drift(m, 1e-6, 1e-3)  # a much larger eps moves the outputs much more
    assert diff > 10 * eps_drift(m, 1e-6, 1e-6)[0] > 0


def test_export_refuses_what_a_format_cannot_hold(tmp_path):
    with torch.device("meta"):
        v1_backbone = pvt.create_model("pvt_v1_tiny", num_classes=0, cls_token=False, accelerate=False)
        ablation = pvt.create_model("pvt_v1_small", conv_ffn=True, accelerate=False)
        b0 = pvt.create_model("pvt_v2_b0", accelerate=False)
    cases = [
        (v1_backbone, "hf", tmp_path / "hf", "PvtModel always has a class token"),
        (ablation, "hf", tmp_path / "hf", "this config mixes them"),
        (ablation, "timm", tmp_path / "t", "timm implements PVT v2 only"),
        (b0, "hf", tmp_path / "x.json", "the hf format is a folder"),
        (b0, "official", tmp_path / "x.safetensors", "the official format is one .pth file"),
        (b0, "onnx", tmp_path / "x", "unknown export format 'onnx'; accepted: pvt, hf, timm, official, mmdet, mmseg"),
    ]
    for model, fmt, dst, match in cases:
        with pytest.raises(ValueError, match=match):
            export_weights(model, fmt, dst)
    with pytest.raises(ValueError, match="3 class names given for a 1000-class head"):
        export_weights(b0, "hf", tmp_path / "hf", class_names=["a", "b", "c"])
    assert not any(tmp_path.iterdir())


def test_features_only_model_cut_short_is_refused_in_one_line(tmp_path):
    """A features_only model with out_indices=(0, 1) never built stages 3 and 4: a clear error, not a
    RuntimeError from load_state_dict deep inside the LayerNorm-eps measurement."""
    cut = pvt.create_model("pvt_v2_b0", features_only=True, out_indices=(0, 1), accelerate=False)
    for fmt in EXPORT_FORMATS:
        with pytest.raises(ValueError, match=r"^this features_only model keeps stages 1-2 of 4 \(out_indices=\(0, 1\)\)"):
            export_weights(cut, fmt, tmp_path / f"x_{DST[fmt]}")
    whole = pvt.create_model("pvt_v2_b0", features_only=True, out_indices=(1, 3), accelerate=False)
    assert export_weights(whole, "official", tmp_path / "whole.pth").files == [tmp_path / "whole.pth"]


def test_headless_hf_hint_names_what_transformers_has(tmp_path, capsys):
    """After a headless --to hf export the hint names PvtV2Backbone for v2 only (transformers has none for v1)."""
    for name, has_backbone in (("pvt_v2_b0", True), ("pvt_v1_tiny", False)):
        src = tmp_path / f"{name}.safetensors"
        save_model(pvt.create_model(name, num_classes=0, accelerate=False), src)
        assert cli_main(["convert", str(src), str(tmp_path / name), "--to", "hf"]) == 0
        hint = capsys.readouterr().out.splitlines()[-1]
        assert hint.startswith(f"load it with transformers.AutoModel.from_pretrained('{tmp_path / name}')")
        assert ("PvtV2Backbone" in hint) is has_backbone and ("no backbone class for PVT v1" in hint) is not has_backbone


def test_convert_to_every_format_and_back(tmp_path, perturb, capsys):
    """``pvt convert SRC DST --to FMT`` from an own-format file with class names; the printed lines; an
    existing destination needs --force; each result converts back to the same tensors."""
    src = tmp_path / "b0.safetensors"
    model = _model("pvt_v2_b0", perturb, num_classes=3)
    save_model(model, src, extra={"class_names": ["cat", "dog", "eel"], "img_size": 224})
    for fmt in EXPORT_FORMATS:
        dst = tmp_path / f"{fmt}_{DST[fmt]}"
        assert cli_main(["convert", str(src), str(dst), "--to", fmt]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"wrote {dst}: pvt_v2_b0, 3,410,531 parameters, 3 classes (from this library's "
                                   f"own names: {src})")
        if fmt != "pvt":
            assert lines[-1].startswith("load it with ")
        if fmt in ("hf", "mmdet", "mmseg"):
            assert any(ln.startswith("note: LayerNorm eps: ") for ln in lines), lines
        again = tmp_path / f"{fmt}_back.safetensors"
        assert cli_main(["convert", str(dst), str(again), "--num-classes", "0"]) == 0
        capsys.readouterr()
        got = read_checkpoint(again).state_dict
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items() if not k.startswith("head."))
    hf = json.loads((tmp_path / "hf_hf" / "config.json").read_text())
    assert hf["id2label"] == {"0": "cat", "1": "dog", "2": "eel"} and hf["architectures"] == ["PvtV2ForImageClassification"]
    assert cli_main(["convert", str(src), str(tmp_path / "hf_hf"), "--to", "hf"]) == 2
    assert capsys.readouterr().err == (f"pvt convert: error: {tmp_path / 'hf_hf' / 'config.json'} exists; pass --force "
                                       "to overwrite it\n")
    assert cli_main(["convert", str(src), str(tmp_path / "hf_hf"), "--to", "hf", "--force"]) == 0


def test_dense_run_exports_its_backbone(tmp_path, capsys):
    """A detector saved as ``pvt train`` saves it: ``pvt convert --to FMT`` writes its backbone, headless
    (HF: the bare model's names), and the backbone comes back bit-identical."""
    from pvt.dense import create_dense_model

    torch.manual_seed(0)
    det = create_dense_model("semfpn_pvt_v2_b0", num_classes=3)
    save_model(det, tmp_path / "best.safetensors", variant="pvt_v2_b0",
               extra={"task": "segmentation", "class_names": ["a", "b", "c"]})
    body = det.backbone.body.body.state_dict()
    for fmt in ("pvt", "hf", "timm", "official", "mmdet"):
        dst = tmp_path / f"{fmt}_{DST[fmt]}"
        with pytest.warns(UserWarning, match="dense-prediction checkpoint"):
            assert cli_main(["convert", str(tmp_path / "best.safetensors"), str(dst), "--to", fmt]) == 0
        assert ", 0 classes (from this library's own names" in capsys.readouterr().out
        with pytest.warns(UserWarning, match="dense-prediction") if fmt == "mmdet" else contextlib.nullcontext():
            got = create_pretrained(None, dst, num_classes=0).state_dict()
        assert set(got) == set(body) and all(torch.equal(got[k], v) for k, v in body.items()), fmt
    assert json.loads((tmp_path / "hf_hf" / "config.json").read_text())["architectures"] == ["PvtV2Model"]
    # the own-format copy is a backbone, not the segmentation run any more (pvt eval would not take it as one)
    assert "task" not in read_checkpoint(tmp_path / "pvt_w.safetensors").extra
