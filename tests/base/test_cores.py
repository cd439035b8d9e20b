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
    assert threads == available
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
