"""The CPU cores this process may use, and how torch's threads wait for work: settings made before torch starts.

PyTorch starts one OpenMP thread per core of the machine (``os.cpu_count()``), not per core the process may
use: under ``taskset`` / a CPU set, or in a container with a CPU quota, that is more threads than cores.
And GNU OpenMP (PyTorch's) makes a thread that waits at a barrier spin, up to ``GOMP_SPINCOUNT`` (300 000)
iterations, before it sleeps. On cores that other work needs (a laptop, a CI runner, data-loader workers,
a quota) the spinning takes that work's time and every barrier waits for a descheduled thread: a 2-core
run beside other processes went several times slower (figures: docs/speed.md). ``OMP_WAIT_POLICY=PASSIVE``
makes waiting threads sleep at once.

Threads beyond the cores that are free hurt as well: two threads on a 2-core machine with one core taken by
another process run at the pace of the descheduled one (about 40 % of idle throughput), one thread on the
free core keeps about 60 %. :func:`free_cores` therefore looks at what the machine's cores did over the last
~0.1 s (``/proc/stat``) and leaves out those that other work kept busy; the choice is made once, at start.

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
import time
from pathlib import Path

__all__ = ["available_cores", "cpu_quota", "cores_in_use", "free_cores", "use_available_cores"]


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


def _cpu_times(stat: str | Path) -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) jiffies since boot from ``/proc/stat`` (idle and iowait count as not busy)."""
    times = {}
    for line in Path(stat).read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 5:
            values = [int(v) for v in fields[:8]]
            total = sum(values)
            times[int(name[3:])] = (total - values[3] - values[4], total)
    return times


def cores_in_use(interval: float = 0.1, stat: str | Path = "/proc/stat") -> float | None:
    """How many of this process's cores other work kept busy over the next ``interval`` seconds: the busy
    share of each core (``/proc/stat``, sampled twice) summed over the cores of this process's affinity,
    less this process's own CPU time. None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        allowed = os.sched_getaffinity(0)
        before, own0, wall0 = _cpu_times(stat), time.process_time(), time.monotonic()
        time.sleep(interval)
        after, own1, wall1 = _cpu_times(stat), time.process_time(), time.monotonic()
    except (AttributeError, OSError, ValueError):
        return None
    busy = 0.0
    for core in allowed & before.keys() & after.keys():
        dt = after[core][1] - before[core][1]
        if dt > 0:
            busy += (after[core][0] - before[core][0]) / dt
    return max(0.0, busy - (own1 - own0) / max(wall1 - wall0, 1e-6))


def free_cores(interval: float = 0.1) -> tuple[int, float | None]:
    """The cores this process may use (:func:`available_cores`) less those other work keeps busy now
    (:func:`cores_in_use` over ``interval`` seconds, a core counted busy from half its time), at least 1;
    returns ``(free, in use)``."""
    cores = available_cores()
    used = cores_in_use(interval)
    if used is None:
        return cores, None
    return max(1, min(cores, cores - math.floor(used + 0.5))), used


def use_available_cores(threads: int | None = None, wait_policy: str | None = "passive",
                        share: bool = True) -> dict[str, str]:
    """Size torch's threads to the cores this process may use and let idle threads sleep; returns what
    was set (``{"threads": ..., "wait_policy": ...}``, each with where it came from).

    Args:
        threads: torch's intra-op threads; None: ``OMP_NUM_THREADS`` when the user set it, else
            :func:`free_cores` (``share=True``: the cores not busy with other work now, sampled over
            0.1 s) or :func:`available_cores` (``share=False``).
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
        if threads is not None:
            n, why = threads, "asked"
        elif share:
            n, used = free_cores()
            why = "cores this process may use" + (f", less {used:.1f} busy with other work" if used else "")
        else:
            n, why = available_cores(), "cores this process may use"
        if torch_loaded:
            sys.modules["torch"].set_num_threads(n)
        else:
            os.environ["OMP_NUM_THREADS"] = str(n)
        done["threads"] = f"{n} ({why})"
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
