"""pvt.bench.timing: interleaved rounds, summary statistics, peak memory (no timing assertions)."""

import pytest
import torch

from pvt.bench.timing import median_and_iqr, peak_memory, time_interleaved


def test_time_interleaved_runs_every_step_in_rotated_rounds(monkeypatch):
    from pvt.bench import timing

    calls = []
    counter = [0]  # a stand-in for the process's page-fault count: step a touches 5 new pages, b 7
    monkeypatch.setattr(timing, "page_faults", lambda: counter[0])
    steps = {"a": lambda: (calls.append("a"), counter.__setitem__(0, counter[0] + 5)),
             "b": lambda: (calls.append("b"), counter.__setitem__(0, counter[0] + 7))}
    faults: dict[str, list[int]] = {}
    times = time_interleaved(steps, warmup=1, repeats=3, faults=faults)
    assert [len(v) for v in times.values()] == [3, 3]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert faults == {"a": [5, 5, 5], "b": [7, 7, 7]}  # each timed call's own faults, warm-up left out
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_interleaved(steps, repeats=0)


def test_median_and_iqr():
    assert median_and_iqr([2.0]) == (2.0, 0.0)
    med, iqr = median_and_iqr([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0 and 0 < iqr < 100


def test_peak_memory_sees_a_temporary():
    def step():
        a = torch.empty(1_000_000)  # 4 MB, freed again
        b = torch.empty(500_000)
        return a.numel() + b.numel()

    assert 5_900_000 <= peak_memory(step) <= 6_500_000
