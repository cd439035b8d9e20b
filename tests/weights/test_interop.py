"""Exports as other libraries use them: transformers' pipeline and timm's own data config on image files
predict what ``pvt predict`` predicts."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pvt.cli import main
from pvt.engine.config import TrainConfig
from pvt.tasks.configs import ClassificationConfig
from pvt.models.registry import create_model
from pvt.weights.checkpoint import save_model

NAMES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]


def _classifier(path, perturb, *, interpolation="bicubic", crop_pct=0.875):
    """A 7-class PVT v2 B0 (timm builds registered variants only) at 32 px written as ``pvt train`` writes one, with perturbed random weights and a
    head scaled up so that the probabilities spread (top-5 well ordered, not near-uniform)."""
    torch.manual_seed(3)
    model = perturb(create_model("pvt_v2_b0", num_classes=len(NAMES), img_size=32), seed=4)
    with torch.no_grad():
        model.head.weight.mul_(40)
    extra = {"task": "classification", "class_names": NAMES, "img_size": 32, "crop_pct": crop_pct,
             "interpolation": interpolation, "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.2, 0.3],
             "train_config": TrainConfig(model="pvt_v2_b0", data=str(path.parent), task_config=ClassificationConfig(
                 img_size=32, crop_pct=crop_pct, interpolation=interpolation)).to_dict()}
    return save_model(model, path, variant="pvt_v2_b0", extra=extra)


def _images(folder):
    """PNG files of several shapes: smooth random colour fields (so that resizing matters). After the resize
    to 36 on the shorter side, the centre-crop margins are even, 4k+1 and 4k+3 (48x40: 43 - 32 = 11), where
    transformers' own crop would start a pixel early (see test_centre_crop_offsets below)."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(48, 42), (40, 61), (37, 37), (90, 52), (33, 70), (48, 40)]):
        small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path)
        paths.append(path)
    assert {(int(max(w, h) * 36 / min(w, h)) - 32) % 4 for w, h in (Image.open(p).size for p in paths)} >= {1, 3}
    return paths


def _cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def test_hf_pipeline_and_timm_predict_what_pvt_predict_does(tmp_path, perturb, interpolation="bicubic"):
    from timm import create_model
    from timm.data import create_transform, resolve_data_config
    from transformers import AutoImageProcessor, pipeline

    ckpt = _classifier(tmp_path / "c.safetensors", perturb, interpolation=interpolation)
    images = _images(tmp_path)
    ours = json.loads(_cli("predict", "--checkpoint", ckpt, "--json", "--topk", 5, "--device", "cpu", *images))
    assert max(t["prob"] for p in ours for t in p["top"]) > 0.5  # not near-uniform
    _cli("convert", ckpt, tmp_path / "hf", "--to", "hf")
    _cli("convert", ckpt, tmp_path / "timm", "--to", "timm")

    def same(got, p):
        assert [g[0] for g in got] == [t["class"] for t in p["top"]]
        assert np.allclose([g[1] for g in got], [t["prob"] for t in p["top"]], atol=1e-4, rtol=0)

    # transformers: the pipeline as a user calls it, default arguments: the exported preprocessor_config.json
    # names TimmWrapperImageProcessor, which runs timm's evaluation transform (pvt predict's)
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "hf")).__name__ == "TimmWrapperImageProcessor"
    clf = pipeline("image-classification", model=str(tmp_path / "hf"))
    for path, p in zip(images, ours):
        same([(r["label"], r["score"]) for r in clf(str(path), top_k=5)], p)

    # timm: its own data config from the exported pretrained_cfg, its own transform
    model = create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    data_cfg = resolve_data_config(model=model)
    assert (data_cfg["crop_pct"], data_cfg["interpolation"], data_cfg["input_size"]) == (0.875, interpolation,
                                                                                         (3, 32, 32))
    tf = create_transform(**data_cfg)
    labels = json.loads((tmp_path / "timm" / "config.json").read_text())["label_names"]
    for path, p in zip(images, ours):
        with torch.no_grad():
            prob = model(tf(Image.open(path).convert("RGB"))[None]).softmax(-1)[0]
        top = prob.topk(5)
        same([(labels[i], float(v)) for v, i in zip(top.values, top.indices)], p)


def test_hf_preprocessor_crops_as_the_checkpoint_says(tmp_path, perturb):
    ckpt = _classifier(tmp_path / "c.safetensors", perturb, interpolation="bilinear", crop_pct=0.9)
    _cli("convert", ckpt, tmp_path / "hf", "--to", "hf")
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 35} and pre["crop_size"] == {"height": 32, "width": 32}
    assert pre["do_center_crop"] is True and pre["resample"] == 2
    assert pre["image_mean"] == [0.5, 0.45, 0.4] and pre["image_std"] == [0.25, 0.2, 0.3]
    # what transformers runs: timm's evaluation transform from these fields
    assert pre["image_processor_type"] == "TimmWrapperImageProcessor"
    assert pre["pretrained_cfg"] == {"input_size": [3, 32, 32], "interpolation": "bilinear", "crop_pct": 0.9,
                                     "crop_mode": "center", "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.2, 0.3]}
    # where timm is not installed, transformers' own PVT processor reads the same recipe from the other fields
    from transformers import PvtImageProcessorPil

    own = PvtImageProcessorPil.from_pretrained(tmp_path / "hf")
    assert (own.size.shortest_edge, own.crop_size.height, own.resample, own.do_center_crop) == (35, 32, 2, True)


def test_centre_crop_offsets():
    """Why the exported folder's processor is timm's and not transformers' PVT one: where the crop margin is
    4k+3, transformers rounds the crop's half pixel down, torchvision's CenterCrop (timm, pvt predict) to even;
    a fact of the two libraries, checked here so that a change shows."""
    from torchvision.transforms import functional as F
    from transformers.image_transforms import center_crop

    img = torch.arange(10 * 43, dtype=torch.float32).reshape(1, 10, 43)  # margin 43 - 36 = 7 = 4 + 3
    theirs = center_crop(img.numpy(), (10, 36), input_data_format="channels_first")
    ours = F.center_crop(img, [10, 36])
    assert theirs[0, 0, 0] == 3 and ours[0, 0, 0] == 4


def test_weights_and_dense_docs_name_only_what_exists():
    """Every ``pvt.<name>`` and ``create_*`` function the two docs name exists (docs/weights.md
    named ``create_task_model`` long after it was gone)."""
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for doc in ("docs/weights.md", "docs/dense.md"):
        text = (root / doc).read_text()
        for dotted in sorted(set(re.findall(r"\b(pvt(?:\.\w+)+)\(", text))):
            module, _, attr = dotted.rpartition(".")
            try:
                obj = importlib.import_module(module)
            except ImportError:
                obj = importlib.import_module(module.rpartition(".")[0])
                obj = getattr(obj, module.rpartition(".")[2])
            assert hasattr(obj, attr), f"{doc}: {dotted}"
        import pvt
        import pvt.dense
        import pvt.weights

        for name in sorted(set(re.findall(r"\b(create_\w+)\(", text)) - {"create_transform"}):  # timm's
            assert any(hasattr(m, name) for m in (pvt, pvt.dense, pvt.weights)), f"{doc}: {name}"


def _deformable_detr(backbone_config):
    """The HF seed's example at a tiny size: Deformable DETR with a PVT v2 backbone built by transformers."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    cfg = DeformableDetrConfig(backbone_config=backbone_config, use_timm_backbone=False, use_pretrained_backbone=False,
                               backbone=None, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10,
                               num_labels=3, num_feature_levels=3)
    return DeformableDetrForObjectDetection(cfg).eval()


def test_load_into_fills_a_deformable_detr_backbone_and_convert_reads_it_back(tmp_path, perturb):
    """docs/dense.md's example: the detector built from the HF seed's config, filled by one call, run; saved
    with save_pretrained, `pvt convert` reads its backbone back out."""
    from transformers import PvtV2Config

    from pvt.weights import load_into, read_checkpoint

    torch.manual_seed(0)
    ours = perturb(create_model("pvt_v2_b0", num_classes=5, accelerate=False))
    save_model(ours, tmp_path / "b0.safetensors", variant="pvt_v2_b0")
    det = _deformable_detr(PvtV2Config(out_features=["stage2", "stage3", "stage4"]))  # PvtV2Config(): B0's shapes
    done = load_into(det, tmp_path / "b0.safetensors")
    bb = det.model.backbone.model
    assert (done.module, done.module_class, len(done.keys)) == ("model.backbone.model", "PvtV2Backbone", 192)
    assert set(done.keys) == set(bb.state_dict())  # every tensor of their backbone (strict)
    assert done.notes[0].startswith("LayerNorm eps: the transformers model uses 1e-06 everywhere")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = bb(pixel_values=x).feature_maps
        ref = ours.forward_intermediates(x, intermediates_only=True)[1:]
        out = det(pixel_values=x)
    assert [m.shape for m in maps] == [r.shape for r in ref]
    assert max(float((a - b).abs().max()) for a, b in zip(maps, ref)) < 2e-4  # HF's eps 1e-6 in every norm
    assert out.logits.shape == (1, 10, 3) and torch.isfinite(out.pred_boxes).all()

    det.save_pretrained(tmp_path / "detr")
    with pytest.warns(UserWarning, match="is a model with a pvt_v2 backbone: took the 192 backbone tensors under "
                                         r"'model.backbone.conv_encoder.model.' and dropped the other \d+"):
        assert cli_main_ok("convert", tmp_path / "detr", tmp_path / "back.safetensors")
    back = read_checkpoint(tmp_path / "back.safetensors").state_dict
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items() if not k.startswith("head."))


def cli_main_ok(*argv):
    return main([str(a) for a in argv]) == 0


def test_load_into_refuses_what_does_not_fit(tmp_path, perturb):
    from transformers import PvtConfig, PvtForImageClassification, PvtV2Config, PvtV2ForImageClassification

    from pvt.weights import load_into

    b1 = create_model("pvt_v2_b1", num_classes=0, accelerate=False)
    clf = PvtV2ForImageClassification(PvtV2Config(num_labels=3)).eval()  # B0
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    with pytest.raises(ValueError, match=r"^checkpoint a pvt_v2_b1 model \(pvt_v2_b1\) does not fit the PvtV2Model at "
                                         r"'pvt_v2': mis-shaped \(\d+\): encoder.layers.0.patch_embedding.proj.weight "
                                         r"file \[64, 3, 7, 7\] vs model \[32, 3, 7, 7\]"):
        load_into(clf, b1)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    with pytest.raises(ValueError, match="holds PVT v1 but the PvtV2Model at 'pvt_v2' is PVT v2"):
        load_into(clf, create_model("pvt_v1_tiny", num_classes=0, accelerate=False))
    with pytest.raises(ValueError, match=r"^Linear holds no PVT model \(transformers' PvtV2Model"):
        load_into(torch.nn.Linear(2, 2), b1)
    done = load_into(clf, create_model("pvt_v2_b0", num_classes=0, accelerate=False))  # the head stays theirs
    assert done.module == "pvt_v2" and torch.equal(clf.classifier.weight, before["classifier.weight"])
    v1 = PvtForImageClassification(PvtConfig(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2],
                                             num_labels=2)).eval()
    ours_v1 = perturb(create_model("pvt_v1_tiny", num_classes=0, accelerate=False))
    assert load_into(v1, ours_v1).module_class == "PvtModel"
    assert torch.equal(v1.pvt.encoder.patch_embeddings[0].projection.weight, ours_v1.stages[0].patch_embed.proj.weight)


def test_a_model_built_from_a_run_carries_its_evaluation_transform(tmp_path, perturb):
    """``pvt.create_model(name, pretrained=run)`` and ``load_pvt(run)`` set ``pretrained_cfg`` from what the
    checkpoint records, so timm's ``resolve_data_config(model=...)`` gives the transform ``pvt predict`` uses."""
    from timm.data import create_transform, resolve_data_config

    import pvt
    from pvt.data.transforms import eval_transform
    from pvt.weights.checkpoint import load_pvt

    ckpt = _classifier(tmp_path / "c.safetensors", perturb, interpolation="bilinear", crop_pct=0.9)
    image = Image.open(_images(tmp_path)[3]).convert("RGB")
    ours = eval_transform(32, 0.9, "bilinear", (0.5, 0.45, 0.4), (0.25, 0.2, 0.3))(image)
    for model in (pvt.create_model("pvt_v2_b0", pretrained=ckpt), load_pvt(ckpt)[0],
                  pvt.create_model("pvt_v2_b0", pretrained=ckpt, img_size=64)):
        cfg = resolve_data_config(model=model)
        size = model.config.img_size
        assert cfg == {"input_size": (3, size, size), "interpolation": "bilinear", "mean": (0.5, 0.45, 0.4),
                       "std": (0.25, 0.2, 0.3), "crop_pct": 0.9, "crop_mode": "center"}
        if size == 32:
            assert torch.equal(create_transform(**cfg)(image), ours)
    # a file that records no evaluation input: the defaults (ImageNet's, 0.875, bicubic)
    plain = save_model(create_model("pvt_v2_b0", num_classes=3, img_size=32), tmp_path / "p.safetensors",
                       variant="pvt_v2_b0")
    assert resolve_data_config(model=load_pvt(plain)[0])["crop_pct"] == 0.875


def test_the_evaluation_crop_has_one_home():
    """0.875 (the evaluation crop) is written once, as pvt.base.constants.EVAL_CROP_PCT; everything else
    (TrainConfig's default, the exports' Preprocessing, eval_transform) refers to it."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "pvt"
    homes = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Constant) and node.value == 0.875]
    assert homes == ["base/constants.py"]
