"""The CPU cores this process may use, and how torch's threads wait for work: settings made before torch starts.

PyTorch starts one OpenMP thread per core of the machine (``os.cpu_count()``), not per core the process may
use: under ``taskset`` / a CPU set, or in a container with a CPU quota, that is more threads than cores.
And GNU OpenMP (PyTorch's) makes a thread that waits at a barrier spin, up to ``GOMP_SPINCOUNT`` (300 000)
iterations, before it sleeps. On cores that other work needs (a laptop, a CI runner, data-loader workers,
a quota) the spinning takes that work's time and every barrier waits for a descheduled thread: a 2-core
run beside other processes went several times slower (figures: docs/speed.md). ``OMP_WAIT_POLICY=PASSIVE``
makes waiting threads sleep at once.

OpenMP reads both settings when it loads, at ``import torch``. :func:`use_available_cores` therefore sets
them as environment variables, and must run before torch is imported for the waiting to change; after
that it can still set the thread count (``torch.set_num_threads``). The ``pvt`` command calls it first
thing (unless the user chose: ``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS`` or ``--threads``). This module
imports nothing heavy.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["available_cores", "cpu_quota", "use_available_cores"]


def cpu_quota(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``; cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us``), the smallest along its path; None where there is none or it cannot be read."""
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        names = controllers.split(",")
        if controllers == "":  # v2: one unified hierarchy
            base, files = root, ("cpu.max",)
        elif "cpu" in names:  # v1: the cpu controller's own hierarchy
            base = next((root / n for n in (controllers, "cpu,cpuacct", "cpu") if (root / n).is_dir()), root / "cpu")
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts) + 1):  # every level may limit; the tightest wins
            limit = _read_limit(base.joinpath(*parts[:depth]), files)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _read_limit(folder: Path, files: tuple[str, ...]) -> float | None:
    try:
        if len(files) == 1:  # v2: "max 100000" or "150000 100000"
            quota, _, period = (folder / files[0]).read_text().strip().partition(" ")
        else:
            quota, period = ((folder / f).read_text().strip() for f in files)
        q, p = int(quota), int(period or 100000)
    except (OSError, ValueError):  # "max", a missing file
        return None
    return q / p if q > 0 and p > 0 else None


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (``sched_getaffinity``) capped by the cgroup CPU
    quota (rounded down, at least 1); ``os.cpu_count()`` where the platform tells neither."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def use_available_cores(threads: int | None = None, wait_policy: str | None = "passive") -> dict[str, str]:
    """Size torch's threads to the cores this process may use and let idle threads sleep; returns what
    was set (``{"threads": ..., "wait_policy": ...}``, each with where it came from).

    Args:
        threads: torch's intra-op threads; None: ``OMP_NUM_THREADS`` when the user set it, else
            :func:`available_cores`.
        wait_policy: ``OMP_WAIT_POLICY`` to set (``passive``, ``active``) unless the environment already
            names one; None leaves it alone. Takes effect only before ``import torch``.
    """
    done: dict[str, str] = {}
    torch_loaded = "torch" in sys.modules
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip():
        done["threads"] = f"{os.environ['OMP_NUM_THREADS']} (OMP_NUM_THREADS)"
    else:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        n = threads if threads is not None else available_cores()
        if torch_loaded:
            sys.modules["torch"].set_num_threads(n)
        else:
            os.environ["OMP_NUM_THREADS"] = str(n)
        done["threads"] = f"{n} ({'asked' if threads is not None else 'cores this process may use'})"
    if wait_policy is None:
        return done
    if wait_policy.lower() not in ("passive", "active"):
        raise ValueError(f"wait_policy {wait_policy!r}: choose from passive, active (or None)")
    if os.environ.get("OMP_WAIT_POLICY", "").strip():
        done["wait_policy"] = f"{os.environ['OMP_WAIT_POLICY']} (OMP_WAIT_POLICY)"
    elif torch_loaded:
        done["wait_policy"] = "unchanged (torch was imported before: set OMP_WAIT_POLICY in the environment)"
    else:
        os.environ["OMP_WAIT_POLICY"] = wait_policy.upper()
        done["wait_policy"] = wait_policy.upper()
    return done
