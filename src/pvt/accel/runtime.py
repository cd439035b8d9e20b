"""Process-wide CPU settings that decide how fast a forward pass runs: the C allocator.

PyTorch takes every CPU tensor from the C library's ``malloc``. glibc serves large blocks with fresh
``mmap`` pages (above a threshold that starts at 128 KiB) and gives free memory at the top of its heap
back to the kernel. A PVT forward allocates and frees tens of megabytes of activations, so with these
defaults every call touches new pages and pays one page fault per 4 KiB, the kernel zeroing each page.
On small CPUs that is a large share of a forward's time (figures and commands: ``docs/speed.md``).

:func:`tune_cpu_allocator` keeps that memory in the process instead: blocks up to 32 MiB (glibc's
largest mmap threshold) come from the heap, and the heap is not trimmed below 1 GiB. After the first
call a forward pass touches no new pages. The cost: the process keeps its peak heap size. It is
glibc-only (a no-op returning ``False`` elsewhere) and changes the whole process, so it is opt-in
for library users; the ``pvt`` command applies it at start-up unless ``PVT_ALLOCATOR=default``.
The CPU inference pieces of :mod:`pvt.accel.cpu` are sized by :data:`MMAP_THRESHOLD` when it is on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "tune_cpu_allocator", "allocator_mode", "configure_allocator", "page_faults"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20
"""Blocks up to this size come from the heap (glibc refuses larger thresholds on 64-bit systems)."""
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20

_mode = "default"


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory (see the module text). Returns whether the settings took effect;
    ``False`` on other C libraries and platforms, where nothing changes. Safe to call more than once."""
    global _mode
    libc = _glibc()
    if libc is None:
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if ok:
        _mode = "tuned"
    return ok


def allocator_mode() -> str:
    """``"tuned"`` after a successful :func:`tune_cpu_allocator` in this process, else ``"default"``."""
    return _mode


def configure_allocator(mode: str | None = None) -> str:
    """Apply ``mode`` (``"tuned"`` or ``"default"``), else the ``PVT_ALLOCATOR`` environment variable,
    else ``"tuned"``; return the mode in effect. The ``pvt`` command calls this at start-up. ``default``
    leaves glibc alone (it cannot undo an earlier tuning in the same process)."""
    source = "mode" if mode is not None else "PVT_ALLOCATOR"
    wanted = (mode if mode is not None else os.environ.get("PVT_ALLOCATOR", "tuned")).strip().lower() or "tuned"
    if wanted not in ("tuned", "default"):
        raise ValueError(f"{source}={wanted!r} is not an allocator mode; choose from: tuned, default")
    if wanted == "tuned":
        tune_cpu_allocator()
    return allocator_mode()


def page_faults() -> int:
    """Minor page faults of this process so far (all threads; 0 where the platform does not count
    them); the difference around a call counts the new pages it touched."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
