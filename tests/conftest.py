"""Shared test set-up: two torch threads, a fixed seed per test, the small image folders the
classification tests train on, and random weights with no tensor at its default (``perturb``)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _make_stripes(root, n_train=12, n_val=4, size=32, seed=0):
    """Three classes of noisy stripe images: horizontal, vertical, diagonal (``root/{train,val}/<class>``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    waves = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}
    for split, n in (("train", n_train), ("val", n_val)):
        for name, w in waves.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (np.sin(w * 0.8 + rng.uniform(0, 6)) > 0) * 200 + rng.integers(0, 50, (size, size))
                Image.fromarray(a.astype(np.uint8)).convert("RGB").save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def make_stripes():
    """``make_stripes(root, n_train=12, n_val=4, size=32, seed=0)``: write a 3-class ImageFolder tree of
    noisy stripe images (horizontal, vertical, diagonal) under ``root`` and return ``root``."""
    return _make_stripes


def _trained_checkpoint(path, data, *, config=None, names=("diagonal", "horizontal", "vertical")):
    """A classifier written as ``pvt train`` writes one (config, task, class names, evaluation input, training
    config), of a narrow PVT v2 at 32 px with untrained weights: what eval / predict / convert / export read."""
    from pvt.engine.config import TrainConfig
    from pvt.models.config import PVTConfig
    from pvt.tasks.configs import ClassificationConfig
    from pvt.models.model import PyramidVisionTransformer
    from pvt.weights.checkpoint import save_model

    config = config or PVTConfig(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                                 mlp_ratios=(2, 2, 2, 2), num_classes=len(names), img_size=32)
    extra = {"task": "classification", "class_names": list(names), "img_size": 32, "crop_pct": 0.875,
             "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
             "train_config": TrainConfig(model="pvt_v2_b0", data=str(data),
                                         task_config=ClassificationConfig(img_size=32)).to_dict(), "epoch": 1}
    return save_model(PyramidVisionTransformer(config), path, variant="pvt_v2_b0", extra=extra)


@pytest.fixture(scope="session")
def trained_checkpoint():
    """``trained_checkpoint(path, data)``: write a small classifier as ``pvt train`` would (data: the folder its
    training config names) and return its path."""
    return _trained_checkpoint


def _perturb(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Add N(0, 0.05^2) noise to every 1-D or constant parameter (biases, LayerNorms, class tokens, zero
    position embeddings); the matrices are already random. Returns the module in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim <= 1 or bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


@pytest.fixture(scope="session")
def perturb():
    """``perturb(module, seed=1)``: random weights as the parity tests use them, so that a swapped,
    dropped or mis-shaped tensor changes the outputs (see :func:`_perturb`)."""
    return _perturb


@pytest.fixture(scope="session")
def stripes_run(tmp_path_factory, make_stripes):
    """``(data, run_dir, stdout)``: one epoch of PVTv2-B0 at 32 px trained by ``pvt train --quiet`` on a
    stripes folder, with what the command printed (shared by the command tests that only read it)."""
    import contextlib
    import io

    from pvt.cli import main

    data = make_stripes(tmp_path_factory.mktemp("stripes"))
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "--data", str(data), "--output", str(out), "--name", "r", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--threads", "1", "--quiet", "--aa", "none", "--model", "pvt_v2_b0", "--img-size", "32"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return data, out / "r", printed.getvalue()
