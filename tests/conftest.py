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
