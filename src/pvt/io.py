"""Atomic file writes: every write goes to a temporary file in the same folder, is flushed to disk and
then renamed over the target, so a kill at any moment leaves either the old file or the new one, never
a broken one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

__all__ = ["atomic_write", "atomic_via", "atomic_save_torch", "remove_temporaries"]


_TMP_SUFFIX = ".tmp"


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
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


def atomic_via(path: str | Path, writer: Callable[[str], None]) -> None:
    """Atomically create ``path`` with ``writer(temporary_path)`` (for libraries that write by name)."""
    with _atomic_path(path) as tmp:
        writer(tmp)


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` made atomic (for training state: optimiser, scheduler, RNG)."""
    atomic_via(path, lambda tmp: torch.save(obj, tmp))


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that writers killed mid-write left in
    ``folder``; returns what was removed. Only call it when no writer is active there."""
    removed = []
    for p in Path(folder).glob(f".*{_TMP_SUFFIX}"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed
