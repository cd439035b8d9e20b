"""Ctrl-C and SIGTERM during training (issue 14, findings 2 and 5): the epoch in flight is dropped, the
last finished epoch stays byte for byte as it was, and the resumed run ends exactly as one never stopped;
a run stopped in its first epoch can be started again under the same name (or resumed, after a kill)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import pvt
from pvt.engine.signals import Interrupted
from pvt.engine.trainer import Trainer

FILES = ("state.pt", "last.safetensors", "best.safetensors", "metrics.jsonl", "config.yaml")


def _signal_at_step(monkeypatch, n: int, signum: int) -> dict:
    """Send ``signum`` to this process as the ``n``-th optimiser step (counting from 1) begins, once; the
    returned dict then holds the digests of the run folder's files just before."""
    real, count, seen = Trainer._step, [0], {}

    def step(self, run, batch, epoch):
        count[0] += 1
        if count[0] == n:
            seen.update(_hashes(self.run_dir))
            os.kill(os.getpid(), signum)
        return real(self, run, batch, epoch)

    monkeypatch.setattr(Trainer, "_step", step)
    return seen


def _hashes(run):
    return {f: hashlib.sha256((run / f).read_bytes()).hexdigest() for f in FILES if (run / f).exists()}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_keeps_the_last_epoch_and_the_resume_is_exact(stripes, tmp_path, tiny, monkeypatch,
                                                                        capsys, signum):
    out = tmp_path / "runs"
    straight = pvt.train(data=str(stripes), output=str(out), name="straight", **tiny)
    before = _signal_at_step(monkeypatch, 3 + 2, signum)  # 3 steps an epoch: in the middle of epoch 2
    run = out / "stopped"
    with pytest.raises(Interrupted) as e:
        pvt.train(data=str(stripes), output=str(out), name="stopped", **tiny)
    assert e.value.signum == signum and e.value.reported
    err = capsys.readouterr().err
    assert f"interrupted ({signal.Signals(signum).name}) during epoch 2: that epoch is dropped; {run} keeps its 1 " \
           f"finished epoch as they were; continue with: pvt train --resume {run}" in err
    assert _hashes(run) == before and len(before) == len(FILES)  # epoch 1's files, byte for byte

    resumed = pvt.train(resume=run, quiet=True)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    a, b = load_file(resumed.last_checkpoint), load_file(straight.last_checkpoint)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert [r["val_loss"] for r in resumed.metrics] == [r["val_loss"] for r in straight.metrics]


def test_a_signal_in_the_first_epoch_removes_the_folder_and_the_same_command_starts_again(stripes, tmp_path, tiny,
                                                                                       monkeypatch, capsys):
    out = tmp_path / "runs"
    _signal_at_step(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Interrupted):
        pvt.train(data=str(stripes), output=str(out), name="early", **tiny)
    assert f"no epoch had finished, so the run folder {out / 'early'} was removed" in capsys.readouterr().err
    assert not (out / "early").exists()
    again = pvt.train(data=str(stripes), output=str(out), name="early", **tiny)
    assert [r["epoch"] for r in again.metrics] == [1, 2, 3]


def test_the_handlers_are_restored_after_a_run(stripes, tmp_path, tiny):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    pvt.train(data=str(stripes), output=str(tmp_path), name="r", **dict(tiny, epochs=1))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def _term_after_first_epoch(proc: subprocess.Popen, run: Path) -> str:
    """Send ``proc`` SIGTERM once ``run`` has a finished epoch; its stderr."""
    t0 = time.time()
    while not (run / "state.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[1]


def test_sigterm_from_outside_exits_143_with_one_message(stripes, tmp_path):
    """The command as a scheduler stops it: SIGTERM from another process, exit status 128 + 15."""
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "pvt", "train", "--data", str(stripes), "--output", str(out), "--name", "t",
           "--quiet", "--epochs=200", "--batch-size=4", "--workers=0", "--threads=1", "--aa=none", "--img-size=32",
           "--model=pvt_v2_b0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = out / "t"
    err = _term_after_first_epoch(proc, run)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM)") and "Traceback" not in err
    assert f"pvt train --resume {run}" in lines[0]


def test_an_error_after_a_finished_epoch_keeps_the_folder(stripes, tmp_path, tiny, monkeypatch):
    """Whatever stops a run later (here an evaluation that breaks in epoch 2), finished epochs stay."""
    from pvt.tasks.classification import ClassificationTask

    real, calls = ClassificationTask.evaluate_part, [0]

    def evaluate_part(self, model, loader, device):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("broken evaluation")
        return real(self, model, loader, device)

    monkeypatch.setattr(ClassificationTask, "evaluate_part", evaluate_part)
    with pytest.raises(RuntimeError, match="broken evaluation"):
        pvt.train(data=str(stripes), output=str(tmp_path), name="kept", **tiny)
    run = tmp_path / "kept"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith((".", "events.out.tfevents."))) == sorted(
        ["best.safetensors", "classes.json", "config.yaml", "last.safetensors", "learning_curves.png",
         "metrics.jsonl", "state.pt", "train.log"])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_sigterm_under_torchrun_stops_every_process_and_keeps_the_last_epoch(stripes, tmp_path):
    """torchrun passes SIGTERM on to its workers: each stops, rank 0 alone says what the folder keeps."""
    from pvt.weights.checkpoint import read_metadata

    out = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "pvt", "train", "--data", str(stripes),
           "--output", str(out), "--name", "ddp", "--quiet", "--epochs=200", "--batch-size=2", "--workers=0",
           "--threads=1", "--aa=none", "--img-size=32", "--model=pvt_v2_b0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run = out / "ddp"
    err = _term_after_first_epoch(proc, run)
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if "interrupted" in line]
    assert len(ours) == 1 and ours[0].startswith("interrupted (SIGTERM)"), err[-3000:]
    assert "pvt/engine" not in err  # no traceback from the workers (torchrun may print its own)
    done = int(__import__("torch").load(run / "state.pt", weights_only=True)["epoch"])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == done >= 1
    assert read_metadata(run / "last.safetensors")["epoch"] == done
    assert f"keeps its {done} finished epoch" in ours[0]
