"""This library's checkpoints: one ``.safetensors`` file whose metadata describes the model, written
and read in one place; and which file of a run folder to read.

Metadata keys: ``format`` (``"pvt"``), ``variant``, ``config`` (the :class:`~pvt.config.PVTConfig` as
JSON), and whatever a trainer adds (``task``, ``class_names``, ``train_config``, ...), each as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .io import atomic_via

__all__ = ["OWN_FORMAT", "save_model", "read_own_format", "resolve_checkpoint"]

OWN_FORMAT = "pvt"


def save_model(
    model: torch.nn.Module,
    path: str | Path,
    *,
    variant: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a PVT or any module with a ``config`` that has ``to_dict``) in the own format.

    Metadata keys: ``format`` ("pvt"), ``variant``, ``config`` (JSON), plus ``extra`` values as JSON.
    """
    from safetensors.torch import save_file

    meta = {"format": OWN_FORMAT}
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        meta["config"] = json.dumps(cfg.to_dict())
    variant = variant or getattr(model, "variant_name", None)
    if variant:
        meta["variant"] = variant
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_via(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


def read_own_format(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(state_dict, metadata)`` if ``path`` is an own-format file, else ``None``.

    JSON-valued metadata entries are decoded; the raw ``format``/``variant`` strings are kept.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    if meta.get("format") != OWN_FORMAT:
        return None
    decoded: dict[str, Any] = {}
    for k, v in meta.items():
        if k in ("format", "variant"):
            decoded[k] = v
        else:
            try:
                decoded[k] = json.loads(v)
            except json.JSONDecodeError:
                decoded[k] = v
    return load_file(str(path)), decoded


def resolve_checkpoint(path: str | Path) -> Path:
    """The weights file behind ``path``: the file itself, or in a run folder ``best.safetensors`` (else
    ``last.safetensors``). FileNotFoundError when there is none."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.safetensors" if (p / "best.safetensors").is_file() else p / "last.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return p
