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

from pvt.checkpoint import save_model
from pvt.cli import main
from pvt.engine.config import TrainConfig
from pvt.registry import create_model

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
             "train_config": TrainConfig(model="pvt_v2_b0", img_size=32, crop_pct=crop_pct,
                                         interpolation=interpolation, data=str(path.parent)).to_dict()}
    return save_model(model, path, variant="pvt_v2_b0", extra=extra)


def _images(folder):
    """PNG files of several shapes: smooth random colour fields (so that resizing matters)."""
    rng = np.random.default_rng(0)
    paths = []
    # (width, height): after the resize to 36 on the shorter side, every centre-crop margin is even or 4k+1
    # (see test_centre_crop_offsets below)
    for i, (w, h) in enumerate([(48, 42), (40, 61), (37, 37), (90, 52), (33, 70)]):
        assert (int(max(w, h) * 36 / min(w, h)) - 32) % 4 != 3
        small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path)
        paths.append(path)
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

    # transformers: the pipeline with Pillow's resize (timm's): the same top-5 and probabilities
    exact = AutoImageProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    clf = pipeline("image-classification", model=str(tmp_path / "hf"), image_processor=exact)
    for path, p in zip(images, ours):
        same([(r["label"], r["score"]) for r in clf(str(path), top_k=5)], p)
    # the pipeline as a user calls it first: transformers' default torchvision backend resizes a uint8 tensor,
    # up to 1/255 away from Pillow in a pixel here; the crop is right (a 256 resize without it moved p by 0.02
    # in the issue), the top class the same, the probabilities within 1e-2 (2.9e-3 measured on these images)
    clf = pipeline("image-classification", model=str(tmp_path / "hf"))
    for path, p in zip(images, ours):
        got = clf(str(path), top_k=5)
        assert got[0]["label"] == p["top"][0]["class"]
        assert abs(got[0]["score"] - p["top"][0]["prob"]) < 1e-2

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


def test_centre_crop_offsets():
    """Why the test images avoid margins of 4k+3: transformers rounds the crop's half pixel down, torchvision's
    CenterCrop (timm, pvt predict) to even; a fact of the two libraries, checked here so that a change shows."""
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

        for name in sorted(set(re.findall(r"\b(create_\w+)\(", text))):
            assert any(hasattr(m, name) for m in (pvt, pvt.dense, pvt.weights)), f"{doc}: {name}"
