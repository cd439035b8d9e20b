"""Timing primitives: interleaved rounds of several steps, the minor page faults of each timed call, and
the peak memory of one call.

Interleaving (every step once per round, order rotated) lets background load on a shared machine hit
all steps alike, so their ratios stay meaningful even when the absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..accel.runtime import page_faults

__all__ = ["sync", "time_interleaved", "median_and_iqr", "peak_memory"]


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; a CPU call has finished)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Callable[[], Any]],
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    faults: dict[str, list[int]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each step, measured round-robin: ``warmup`` untimed rounds, then
    ``repeats`` rounds in which every step runs once (order rotated each round). ``faults``, when
    given, receives each timed call's minor page faults per step."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            f0 = page_faults() if faults is not None else 0
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
            if faults is not None:
                faults.setdefault(n, []).append(page_faults() - f0)
    return times


def median_and_iqr(seconds: list[float]) -> tuple[float, float]:
    """Median and interquartile range of timed calls (range 0 for a single call)."""
    med = statistics.median(seconds)
    if len(seconds) < 2:
        return med, 0.0
    q = statistics.quantiles(seconds, n=4)
    return med, q[2] - q[0]


def peak_memory(step: Callable[[], Any], device: str = "cpu") -> float:
    """Peak bytes allocated during one call of ``step`` beyond those live before it.

    CUDA: the allocator's peak statistic. CPU: replays the allocation events of the PyTorch profiler."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return float(peak)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Mute the profiler back-end's own start/stop lines, which it writes straight to file descriptor 2."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
