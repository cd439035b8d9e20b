"""Multi-node training as documented (docs/classification.md, "Training on ImageNet"), simulated on this
machine: two ``torchrun --nnodes 2 --nproc_per_node 1`` groups meet at a c10d rendezvous on 127.0.0.1 and
train with gloo over the loopback interface (every address is 127.0.0.1: ``--rdzv-endpoint``,
``--local-addr``, ``GLOO_SOCKET_IFNAME=lo``), from shards.

Each "node" runs in its own working folder with a relative ``--output``, as two machines without shared
storage would: only the node holding global rank 0 may get a run folder. The node holding rank 0 is
killed (SIGKILL to its agent and worker) once an epoch is saved; the other node must then stop by
itself. Both restart with ``--resume`` on the run folder (a shared path, as resuming needs every node to
read ``state.pt``), possibly with the ranks swapped, and the run ends with the weights and metrics of an
uninterrupted 2-process run. Every wait is bounded and every process left is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pvt.data import write_shards

TORCHRUN = Path(sys.executable).with_name("torchrun")
LOOPBACK = "127.0.0.1"
TRAIN = ["--epochs", "4", "--batch-size", "4", "--img-size", "32", "--model", "pvt_v2_b0", "--workers", "0",
         "--threads", "1", "--warmup-epochs", "1", "--lr", "1e-3", "--quiet"]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this python")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GLOO_SOCKET_IFNAME="lo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        f = _stat(int(stat.parent.name))
        if f is not None and f[1] == str(pid):
            out.append((int(stat.parent.name), f[19]))
    return out


class _Node:
    """One node: a torchrun agent and the worker it starts. torchrun puts each worker in a session of its
    own, so the node's processes are followed through /proc while the agent lives, each known by its pid
    and start time (never a reused pid)."""

    def __init__(self, cwd: Path, port: int, run_id: str, args: list[str], log: Path):
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = [str(TORCHRUN), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"{LOOPBACK}:{port}", "--rdzv-id", run_id, "--local-addr", LOOPBACK,
               "--max-restarts", "0", "-m", "pvt", "train", *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.pids: set[tuple[int, str]] = set()
        self.poll()

    def poll(self) -> int | None:
        if self.proc.poll() is None:
            f = _stat(self.proc.pid)
            todo = [(self.proc.pid, f[19])] if f is not None else []
            while todo:
                p = todo.pop()
                self.pids.add(p)
                todo += _children(p[0])
        return self.proc.poll()

    def alive(self) -> list[int]:
        """The node's processes still running (same pid and start time, not a zombie)."""
        out = []
        for pid, start in self.pids:
            f = _stat(pid)
            if f is not None and f[19] == start and f[0] != "Z":
                out.append(pid)
        return out

    def kill(self, settle: float = 10.0) -> None:
        self.poll()
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        t0 = time.time()
        while self.alive() and time.time() - t0 < settle:
            time.sleep(0.05)


def _wait(nodes: list[_Node], timeout: float) -> list[int | None]:
    t0 = time.time()
    while time.time() - t0 < timeout and any(n.poll() is None for n in nodes):
        time.sleep(0.2)
    return [n.poll() for n in nodes]


def _epochs_saved(run: Path) -> int:
    try:
        return int(torch.load(run / "state.pt", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_stripes) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    data = make_stripes(root / "data", n_train=12, n_val=3)  # 36 train images: 4 steps of 2 x 4 per epoch
    write_shards(data, root / "shards", shard_size=5)
    return root / "shards"


@pytest.fixture(scope="module")
def reference(shards) -> Path:
    """The same run on two processes, never interrupted."""
    out = shards.parent / "ref"
    with (shards.parent / "reference.log").open("w") as log:
        ref = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "pvt", "train", "--data",
                              str(shards), "--output", str(out), "--name", "mn", *TRAIN],
                             env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert ref.returncode == 0, (shards.parent / "reference.log").read_text()[-3000:]
    return out / "mn"


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["rank 0's node", "the other node"])
def test_two_nodes_over_loopback_survive_a_killed_node_and_resume(victim, shards, reference, tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log", tmp_path / "node0-resumed.log",
            tmp_path / "node1-resumed.log"]
    args = ["--data", str(shards), "--output", "runs", "--name", "mn", *TRAIN]
    procs: list[_Node] = []

    def tails() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs if p.exists())

    try:
        port = _free_port()
        procs = [_Node(nodes[i], port, "first", args, logs[i]) for i in range(2)]
        # wait until the run has saved an epoch (on whichever node holds global rank 0)
        t0, run = time.time(), None
        while run is None:
            assert time.time() - t0 < 240, "no epoch saved within 240 s\n" + tails()
            assert all(p.poll() is None for p in procs), "a node stopped early\n" + tails()
            run = next((n / "runs" / "mn" for n in nodes if (n / "runs" / "mn" / "state.pt").exists()), None)
            time.sleep(0.02)
        writer = nodes.index(run.parents[1])
        dead = writer if victim == "rank 0's node" else 1 - writer
        assert len(procs[dead].pids) >= 2  # the agent and its worker
        procs[dead].kill()  # agent and worker at once, SIGKILL
        assert not procs[dead].alive()
        t_kill = time.time()
        codes = _wait(procs, 120)
        assert codes[1 - dead] not in (None, 0), "the surviving node did not stop by itself\n" + tails()
        assert not procs[1 - dead].alive()
        print(f"killed {victim}; the other stopped {time.time() - t_kill:.1f}s later")
        saved = _epochs_saved(run)
        assert 1 <= saved < 4, saved
        assert not (nodes[1 - writer] / "runs").exists()  # global rank 0 alone wrote the run folder

        port = _free_port()
        procs = [_Node(nodes[i], port, "resumed", ["--resume", str(run)], logs[2 + i]) for i in range(2)]
        codes = _wait(procs, 300)
        assert codes == [0, 0], tails()
        assert not (nodes[1 - writer] / "runs").exists()
        lines = _lines(run)
        assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
        assert f"resumed {run} at epoch {saved + 1}/4" in (run / "train.log").read_text()

        # the same weights and scores as the run never interrupted
        a, b = load_file(run / "last.safetensors"), load_file(reference / "last.safetensors")
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-6, worst
        ref_lines = _lines(reference)
        for key in ("val_top1", "val_top5", "val_images"):
            assert [r[key] for r in lines] == [r[key] for r in ref_lines], key
        assert [r["train_loss"] for r in lines] == pytest.approx([r["train_loss"] for r in ref_lines], abs=1e-6)
    finally:
        for p in procs:
            p.kill()
