"""Resume: a run killed with SIGKILL loses at most the epoch in flight and, resumed, ends with the same
weights as a run never interrupted; Ctrl-C keeps the last finished epoch as it was and drops the one in
flight (tests/engine/test_interrupts.py checks that in detail)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pvt

ARGS = dict(epochs=3, batch_size=8, workers=0, threads=1, aa="none", img_size=32, model="pvt_v2_b0",
            warmup_epochs=1.0, lr=1e-3)


def _cli(data: Path, out: Path, name: str) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()]
    return [sys.executable, "-m", "pvt", "train", "--data", str(data), "--output", str(out), "--name", name,
            "--quiet", *flags]


def _wait_for(pred, proc, timeout=240.0):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _epochs_done(run: Path) -> int:
    p = run / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_stripes):
    return make_stripes(tmp_path_factory.mktemp("stripes"))


def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen(_cli(data, out, "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = out / "killed"
    _wait_for(lambda: (run / "state.pt").exists() and (run / "last.safetensors").exists(), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    st = torch.load(run / "state.pt", weights_only=True)  # whatever moment the kill came, the file is whole
    done = st["epoch"]
    assert 1 <= done < ARGS["epochs"]
    load_file(run / "last.safetensors")

    result = pvt.train(resume=run, quiet=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # each epoch once: the one in flight was redone
    assert torch.load(run / "state.pt", weights_only=True)["epoch"] == 3
    assert not list(run.glob(".*.tmp"))  # a temporary the killed writer left is cleaned up on resume

    ref = pvt.train(data=str(data), output=str(out), name="straight", quiet=True, **ARGS)
    a, b = load_file(result.last_checkpoint), load_file(ref.last_checkpoint)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    assert [r["val_top1"] for r in lines] == pytest.approx([r["val_top1"] for r in ref.metrics])
    # resuming a finished run is a no-op; asking for more epochs extends it
    assert pvt.train(resume=run, quiet=True).metrics == result.metrics
    more = pvt.train(resume=run, quiet=True, epochs=4)
    assert [r["epoch"] for r in more.metrics] == [1, 2, 3, 4]
    assert "epochs: 4" in (run / "config.yaml").read_text()


def test_ctrl_c_keeps_the_last_finished_epoch(data, tmp_path):
    out = tmp_path / "runs"
    cmd = _cli(data, out, "int")
    cmd[cmd.index("--epochs=3")] = "--epochs=50"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = out / "int"
    _wait_for(lambda: _epochs_done(run) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT)" in err and f"pvt train --resume {run}" in err and "Traceback" not in err
    st = torch.load(run / "state.pt", weights_only=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert st["epoch"] >= 1 and len(lines) == st["epoch"]  # nothing of the epoch in flight was written
    assert f"keeps its {st['epoch']} finished epoch" in err


def test_resume_errors(data, tmp_path, capsys):
    from pvt.cli import main

    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "run folder" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["train", "--resume", str(tmp_path / "plain")]) == 2
    assert "is not a resumable run folder (it has no config.yaml" in capsys.readouterr().err


def test_a_flag_of_another_task_is_refused_not_dropped_on_resume(tmp_path):
    # a recorded config may hold former keys of other tasks, which reading it leaves out; a flag the user
    # gives on resume must not vanish the same way (pvt train --resume <segmentation run> --mixup 0)
    import yaml

    from pvt.engine.resume import resume_config
    from pvt.tasks import read_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = read_config({"task": "segmentation", "model": "semantic_fpn_pvt_v2_b0", "epochs": 2})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    read = lambda data: read_config(data, recorded=True)  # noqa: E731 (what pvt.api passes)
    assert resume_config(run, {"epochs": 3}, read=read).epochs == 3
    with pytest.raises(ValueError, match=r"with mixup: not a setting of this run \(task 'segmentation'\)"):
        resume_config(run, {"epochs": 3, "mixup": 0.0}, read=read)
