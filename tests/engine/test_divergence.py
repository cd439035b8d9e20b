"""A run whose weights or loss go non-finite (issue 14, finding 1): it stops with one error naming the
epoch and the cause's remedy, and the last finite epoch stays exactly as it was."""

from __future__ import annotations

import hashlib

import pytest
import torch

import pvt
from pvt.cli import main
from pvt.engine.trainer import Trainer, TrainingDiverged
from pvt.tasks.classification import ClassificationTask

FILES = ("state.pt", "last.safetensors", "best.safetensors", "metrics.jsonl")


def _hashes(run):
    return {f: hashlib.sha256((run / f).read_bytes()).hexdigest() for f in FILES}


def _poison_after_step(monkeypatch, n: int) -> dict:
    """After the ``n``-th optimiser step, one weight becomes NaN (as a too-large step makes it); the
    returned dict then holds the run folder's digests from before that step."""
    real, count, seen = Trainer._step, [0], {}

    def step(self, run, batch, epoch):
        count[0] += 1
        if count[0] == n:
            seen.update(_hashes(self.run_dir))
        out = real(self, run, batch, epoch)
        if count[0] == n:
            with torch.no_grad():
                next(run.model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "_step", step)
    return seen


def test_weights_gone_non_finite_stop_the_run_and_keep_the_last_finite_epoch(stripes, tmp_path, tiny, monkeypatch):
    before = _poison_after_step(monkeypatch, 6)  # the last step of epoch 2: the loss never sees it
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as e:
        pvt.train(data=str(stripes), output=str(tmp_path), name="nan", **tiny)
    msg = str(e.value)
    assert msg.startswith("training diverged in epoch 2: 1 weight tensors became non-finite (e.g. stages.0.")
    assert f"nothing of epoch 2 was saved and {run} keeps epoch 1 as it was" in msg
    assert "start a new run with a lower --lr (this one used 0.005)" in msg and "\n" not in msg
    assert _hashes(run) == before  # epoch 1's files, byte for byte
    st = torch.load(run / "state.pt", weights_only=True)
    assert st["epoch"] == 1 and all(bool(t.isfinite().all()) for t in st["model"].values())


def test_a_non_finite_loss_names_the_weights_as_its_cause(stripes, tmp_path, tiny, monkeypatch):
    _poison_after_step(monkeypatch, 4)  # epoch 2's first step: the next forward gives a NaN loss
    with pytest.raises(TrainingDiverged, match=r"^training diverged in epoch 2: the loss is nan and 1 weight tensors "
                                               r"are non-finite .* start a new run with a lower --lr"):
        pvt.train(data=str(stripes), output=str(tmp_path), name="nan", **tiny)


def test_a_non_finite_loss_from_the_data_names_the_data(stripes, tmp_path, tiny, monkeypatch):
    real = ClassificationTask.train_step

    def train_step(self, model, batch, device):
        batch[0][0, 0, 0, 0] = float("inf")  # as a corrupt image or annotation would bring it
        return real(self, model, batch, device)

    monkeypatch.setattr(ClassificationTask, "train_step", train_step)
    with pytest.raises(TrainingDiverged) as e:
        pvt.train(data=str(stripes), output=str(tmp_path), name="inf", **tiny)
    assert "on a batch that holds non-finite numbers" in str(e.value)
    assert "check the data" in str(e.value) and "--lr" not in str(e.value)
    assert not (tmp_path / "inf").exists()  # no epoch had finished: nothing kept


def _flag(key: str, value) -> str:
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name}={value}"


def test_the_cli_reports_a_divergence_on_one_line(stripes, tmp_path, tiny, monkeypatch, capsys):
    _poison_after_step(monkeypatch, 6)
    flags = [_flag(k, v) for k, v in tiny.items() if k != "quiet"]
    assert main(["train", "--data", str(stripes), "--output", str(tmp_path), "--name", "c", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pvt train: error: training diverged in epoch 2")
