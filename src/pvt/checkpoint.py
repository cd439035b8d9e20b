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

from .config import PVTConfig
from .io import atomic_via
from .model import PyramidVisionTransformer

__all__ = ["OWN_FORMAT", "save_model", "read_metadata", "read_own_format", "build_pvt", "load_pvt",
           "resolve_checkpoint"]

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


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The metadata of an own-format file (only its header is read), JSON values decoded; ``None`` when
    ``path`` is not a file in this library's format."""
    from safetensors import safe_open

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
    return decoded


def read_own_format(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(state_dict, metadata)`` if ``path`` is an own-format file, else ``None`` (see :func:`read_metadata`)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    return None if meta is None else (load_file(str(path)), meta)


def build_pvt(meta: dict[str, Any], state: dict[str, torch.Tensor], source: str | Path) -> PyramidVisionTransformer:
    """The :class:`PyramidVisionTransformer` an own-format file describes: built from the config it
    records, with its tensors loaded (a ValueError when the file records no config or the tensors do not
    fit it). The training-time rates (dropout, stochastic depth) are switched off."""
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"checkpoint {str(source)!r} records no PVT config (it was not written by pvt)")
    try:
        cfg = PVTConfig.from_dict(meta["config"]).replace(drop_path_rate=0.0, drop_rate=0.0, attn_drop_rate=0.0)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(source)!r}: its metadata holds an invalid PVT config: {e}") from None
    model = PyramidVisionTransformer(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(source)!r} does not match its own config: {str(e).splitlines()[0]}") from None
    if isinstance(meta.get("variant"), str):
        model.variant_name = meta["variant"]
    return model


def load_pvt(path: str | Path) -> tuple[PyramidVisionTransformer, dict[str, Any]]:
    """``(model, metadata)`` of an own-format PVT file or run folder (see :func:`resolve_checkpoint`)."""
    file = resolve_checkpoint(path)
    own = read_own_format(file)
    if own is None:
        raise ValueError(f"checkpoint {str(file)!r} is not in this library's format (a .safetensors file with "
                         "format=pvt metadata); convert it with `pvt convert`")
    state, meta = own
    return build_pvt(meta, state, file), meta


def resolve_checkpoint(path: str | Path) -> Path:
    """The weights file behind ``path``: the file itself, or in a run folder ``best.safetensors`` (else
    ``last.safetensors``). FileNotFoundError when there is none."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.safetensors" if (p / "best.safetensors").is_file() else p / "last.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return p
