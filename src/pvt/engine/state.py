"""Resumable training state: everything saved as tensors, numbers, strings, lists and dicts so that
``torch.load(path, weights_only=True)`` reads it back."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.io import atomic_save_torch, load_torch

__all__ = ["rng_state", "set_rng_state", "save_state", "load_state", "missing_keys", "STATE_VERSION", "STATE_KEYS"]

STATE_VERSION = 1
STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "best", "updates", "rng")
"""What a state written by the trainer holds (and a resume reads)."""


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) random states, weights_only-safe."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (see :func:`pvt.base.io.atomic_save_torch`)."""
    atomic_save_torch(dict(state, version=STATE_VERSION), path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (``weights_only=True``: no code is unpickled).

    FileNotFoundError when it is missing; a one-line ValueError naming the file when it is empty,
    truncated, corrupt, holds Python objects (refused as unsafe) or is no mapping with an ``epoch``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state {str(path)!r}; is this a run folder written by pvt train?")
    st = load_torch(path, "training state")
    if not isinstance(st, dict) or "epoch" not in st:
        raise ValueError(f"{path} is not a training state written by pvt train (it records no epoch)")
    return st


def missing_keys(state: dict[str, Any]) -> list[str]:
    """The :data:`STATE_KEYS` a loaded state lacks."""
    return [k for k in STATE_KEYS if k not in state]
