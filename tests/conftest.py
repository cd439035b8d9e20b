"""Shared test set-up: two torch threads, a fixed seed per test, and the small image folders the
classification tests train on."""

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
