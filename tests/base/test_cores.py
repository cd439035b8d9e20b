"""pvt.base.cores: the cores a process may use (affinity capped by a cgroup v1 / v2 CPU quota) and the settings
the ``pvt`` command makes before torch loads (threads, passive OpenMP waiting), the user's choices kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvt.base import cores

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_and_v1_quotas(tmp_path):
    v2 = tmp_path / "v2"
    _write(v2 / "cpu.max", "max 100000\n")  # the root: no limit
    _write(v2 / "ci" / "job" / "cpu.max", "150000 100000\n")
    _write(v2 / "ci" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "self_v2", "0::/ci/job\n")
    assert cores.cpu_quota(v2, tmp_path / "self_v2") == 1.5  # the tightest level along the path
    _write(tmp_path / "self_unlimited", "0::/\n")
    assert cores.cpu_quota(v2, tmp_path / "self_unlimited") is None
    v1 = tmp_path / "v1"
    _write(v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us", "50000\n")
    _write(v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us", "100000\n")
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")  # v1's "no limit"
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "self_v1", "4:memory:/docker\n3:cpu,cpuacct:/docker\n")
    assert cores.cpu_quota(v1, tmp_path / "self_v1") == 0.5
    assert cores.cpu_quota(tmp_path / "nothing", tmp_path / "missing") is None


def test_available_cores_follow_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cores, "cpu_quota", lambda: None)
    assert cores.available_cores() == 4
    monkeypatch.setattr(cores, "cpu_quota", lambda: 2.5)
    assert cores.available_cores() == 2  # a quota of 2.5 cores: 2 threads, not 3 throttled ones
    monkeypatch.setattr(cores, "cpu_quota", lambda: 0.5)
    assert cores.available_cores() == 1


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**base, "PYTHONPATH": SRC, "OMP_DISPLAY_ENV": "TRUE", **env})


def test_set_before_torch_loads_and_the_users_choice_kept():
    code = ("from pvt.base.cores import use_available_cores, available_cores; print(use_available_cores()); "
            "import torch; print(torch.get_num_threads(), available_cores())")
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out.stderr  # what OpenMP itself read when it loaded
    threads, available = out.stdout.split()[-2:]
    chosen = out.stdout.split("'threads': '")[1].split()[0]  # the free cores: available less those busy now
    assert threads == chosen and 1 <= int(threads) <= int(available)
    kept = _run(code, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in kept.stderr and kept.stdout.split()[-2] == "1"
    late = _run("import torch; from pvt.base.cores import use_available_cores; print(use_available_cores(threads=1)); "
                "print(torch.get_num_threads())")
    assert "unchanged (torch was imported before" in late.stdout and late.stdout.split()[-1] == "1"
    with pytest.raises(ValueError, match="threads"):
        cores.use_available_cores(threads=0)
    with pytest.raises(ValueError, match="wait_policy"):
        cores.use_available_cores(threads=1, wait_policy="lazy")


def test_the_command_waits_passively_by_default():
    probe = _run("import sys, pvt.cli; print('torch' in sys.modules)")
    # the command can set OpenMP's waiting only because importing it loads no torch
    assert probe.stdout.strip() == "False", probe.stderr
    code = "import sys; from pvt.cli import main; sys.argv = ['pvt', 'info', 'pvt_v2_b0']; sys.exit(main())"
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out.stderr
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in _run(code, OMP_WAIT_POLICY="ACTIVE").stderr


def test_cores_busy_with_other_work_are_left_out(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    # cpu0 busy 90 of 100 jiffies, cpu1 busy 10 of 100 (idle and iowait are not busy); cpu2 is not ours
    samples = iter([
        "cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 10 0 0 190 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0\n",
        "cpu  0 0 0 0 0 0 0 0\ncpu0 180 0 10 110 0 0 0 0\ncpu1 15 0 5 260 20 0 0 0\ncpu2 50 0 0 50 0 0 0 0\n",
    ])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    real_times = cores._cpu_times

    def next_sample(path):
        stat.write_text(next(samples))
        return real_times(path)

    monkeypatch.setattr(cores, "_cpu_times", next_sample)
    monkeypatch.setattr(cores.time, "process_time", lambda: 0.0)  # this process: no CPU time of its own
    assert cores.cores_in_use(0.0, stat) == pytest.approx(1.0)
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    for used, free in [(0.02, 2), (0.6, 1), (1.0, 1), (1.9, 1), (None, 2)]:
        monkeypatch.setattr(cores, "cores_in_use", lambda interval=0.1, u=used: u)
        assert cores.free_cores() == (free, used)
    monkeypatch.setattr(cores, "cores_in_use", lambda interval=0.1: 1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or pytest.importorskip("torch"))
    import torch

    before = torch.get_num_threads()
    try:
        done = cores.use_available_cores(wait_policy=None)
        assert done == {"threads": "1 (cores this process may use, less 1.0 busy with other work)"}
        assert torch.get_num_threads() == 1
        assert cores.use_available_cores(wait_policy=None, share=False)["threads"] == "2 (cores this process may use)"
    finally:
        torch.set_num_threads(before)
