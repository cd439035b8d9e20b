"""Experiment tracking: a ``pvt train`` run's TensorBoard event files hold what metrics.jsonl holds; MLflow and
W&B get the same records, offline, where asked for; a tracker that is not installed is one line."""

from __future__ import annotations

import json
import sys
import types

import pytest

from pvt.cli import main
from pvt.engine.tracking import Trackers, check_trackers


def test_train_writes_tensorboard_events_beside_metrics(stripes_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = stripes_run
    assert list(run_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tags = set(acc.Tags()["scalars"])
    assert {"lr", "images_per_s", "train_loss", "val_loss", "val_top1", "val_top5"} <= tags
    for tag in tags:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["epoch"] for r in records]
        assert [e.value for e in events] == pytest.approx([r[tag] for r in records], rel=1e-6)


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, make_stripes, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    argv = ["train", "--data", str(make_stripes(tmp_path / "d", n_train=2, n_val=1)), "--output", str(tmp_path / "runs"),
            "--name", "r", "--epochs", "1", "--log", "tensorboard,wandb", "--model", "pvt_v2_b0", "--img-size", "32"]
    assert main(argv) == 2
    assert capsys.readouterr().err == ("pvt train: error: log wandb: the wandb package is not installed; pip install "
                                       "'pvt[wandb]' (or leave wandb out of --log)\n")
    assert not (tmp_path / "runs" / "r").exists()
    with pytest.raises(ValueError, match=r"^log 'neptune': accepted: tensorboard, mlflow, wandb \(comma-separated\), or none"):
        check_trackers("neptune")
    assert check_trackers("none") == []


def test_mlflow_and_wandb_get_the_records_offline(tmp_path, monkeypatch):
    """Stand-ins for the two packages record what pvt asks of them: a file store in the run folder for MLflow,
    offline mode for W&B, the same scalars as metrics.jsonl with the epoch as step."""
    calls = []
    mlflow = types.ModuleType("mlflow")
    mlflow.set_tracking_uri = lambda uri: calls.append(("mlflow.uri", uri))
    mlflow.start_run = lambda run_name: calls.append(("mlflow.start", run_name))
    mlflow.log_params = lambda params: calls.append(("mlflow.params", params["model"]))
    mlflow.log_metrics = lambda values, step: calls.append(("mlflow.metrics", step, values))
    mlflow.end_run = lambda: calls.append(("mlflow.end",))
    wandb = types.ModuleType("wandb")

    class Run:
        def log(self, values, step):
            calls.append(("wandb.log", step, values))

        def finish(self):
            calls.append(("wandb.finish",))

    def init(**kw):
        calls.append(("wandb.init", kw["mode"], kw["dir"], kw["name"]))
        return Run()

    wandb.init = init
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t = Trackers(["mlflow", "wandb"], run_dir, {"model": "pvt_v2_b0", "scale": [0.08, 1.0]})
    t.log({"epoch": 1, "lr": 1e-3, "train_loss": 1.5, "val_top1": 40.0, "images_per_s": 12.5, "flag": True})
    t.close()
    values = {"lr": 1e-3, "train_loss": 1.5, "val_top1": 40.0, "images_per_s": 12.5}
    assert calls == [
        ("mlflow.uri", (run_dir / "mlruns").resolve().as_uri()), ("mlflow.start", "run"), ("mlflow.params", "pvt_v2_b0"),
        ("wandb.init", "offline", str(run_dir), "run"),
        ("mlflow.metrics", 1, values), ("wandb.log", 1, values),
        ("mlflow.end",), ("wandb.finish",),
    ]
