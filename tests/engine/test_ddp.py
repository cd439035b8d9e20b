"""DDP: ``torchrun --nproc_per_node 2`` (gloo on CPU) trains to the same weights and scores as one process
with the same global batch (no randomness: no augmentation, mixup, dropout or stochastic depth). AdamW's epsilon
is raised to 1e-6 so that parameters with near-zero gradients do not turn rounding noise into full-size
steps (with 1e-8 the two runs differ by 2.6e-5 after 6 steps; with 1e-6 by 3.8e-7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

TORCHRUN = Path(sys.executable).with_name("torchrun")
DETERMINISTIC = ["--aa", "none", "--color-jitter", "0", "--reprob", "0", "--hflip", "0", "--scale", "1,1",
                 "--ratio", "1,1", "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--smoothing", "0.1",
                 "--epochs", "2", "--warmup-epochs", "0.5", "--opt-eps", "1e-6", "--lr", "1e-3", "--workers", "0", "--threads", "1",
                 "--img-size", "32", "--model", "pvt_v2_b0", "--quiet",
                 "--repeated-aug"]  # forced in both runs: by default only the two processes would use it


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_gloo_processes_match_one_process(tmp_path, make_stripes):
    data = make_stripes(tmp_path / "data", n_train=8, n_val=3)  # 24 images: 3 steps of global batch 8; 9 to score
    out = tmp_path / "runs"
    common = ["-m", "pvt", "train", "--data", str(data), "--output", str(out), *DETERMINISTIC]
    one = subprocess.run([sys.executable, *common, "--name", "one", "--batch-size", "8"],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else "torchrun"
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", *common, "--name", "two",
                          "--batch-size", "4"], capture_output=True, text=True, env=_env(), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(out / "one" / "last.safetensors"), load_file(out / "two" / "last.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst  # measured 3.8e-7
    m1 = [json.loads(x) for x in (out / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (out / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in m1] == pytest.approx([r["train_loss"] for r in m2], abs=1e-5)
    assert [r["val_loss"] for r in m1] == pytest.approx([r["val_loss"] for r in m2], abs=1e-5)
    # both processes scored their slices (4 and 5 images): every image once
    assert [r["val_images"] for r in m2] == [9.0, 9.0]
    assert [r["val_top1"] for r in m1] == [r["val_top1"] for r in m2]
    # rank 0 alone wrote the run folder; the run did train (weights and loss changed)
    def names(run):  # TensorBoard's event file is named by host, time and process: one per run
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        return sorted(p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents."))

    assert names(out / "two") == names(out / "one")
    assert m1[-1]["train_loss"] != m1[0]["train_loss"]
    assert "x2 processes" in (out / "two" / "train.log").read_text()
