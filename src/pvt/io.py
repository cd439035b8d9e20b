"""Atomic file writes and the library's own weight format.

The own format is one ``.safetensors`` file whose metadata carries the model's config (and, for
trained models, the class names), so a file describes itself. Every write goes to a temporary file in
the same folder, is flushed to disk and then renamed over the target: a kill at any moment leaves
either the old file or the new one, never a broken one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

__all__ = ["atomic_write", "atomic_save_torch", "save_model", "read_own_format", "OWN_FORMAT"]

OWN_FORMAT = "pvt"


def _default_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (0o666 less the umask); mkstemp uses 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _commit(tmp: str, path: Path) -> None:
    """Make the finished temporary file ``tmp`` the file at ``path``, durably."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def _atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; once the body has written it, fsync it and rename it over
    ``path``. On any exception (a kill included) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    with _atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def _atomic_via(path: str | Path, writer: Callable[[str], None]) -> None:
    """Atomically create ``path`` with ``writer(temporary_path)`` (for libraries that write by name)."""
    with _atomic_path(path) as tmp:
        writer(tmp)


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` made atomic (for training state: optimiser, scheduler, RNG)."""
    _atomic_via(path, lambda tmp: torch.save(obj, tmp))


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
    _atomic_via(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
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
