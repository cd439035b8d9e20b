"""Experiment trackers: each committed epoch's record (the line ``metrics.jsonl`` gains: losses, scores,
``lr``, ``images_per_s``, times) also goes to the trackers ``TrainConfig.log`` names.

``tensorboard`` (the default) writes event files into the run folder, beside ``metrics.jsonl``, when the
``tensorboard`` package is installed (``pip install 'pvt[track]'``) and is skipped silently where it is
not; ``tensorboard --logdir runs`` then shows every run by its folder name. ``mlflow`` and ``wandb`` are
used only when asked for, and nothing leaves the machine unless the user says so: MLflow logs to a file
store in the run folder (``mlruns/``) unless ``MLFLOW_TRACKING_URI`` names another, W&B runs offline
(``wandb/`` in the run folder) unless ``WANDB_MODE`` says otherwise. A tracker that is asked for and not
installed is a ValueError naming the extra, raised before the run folder is made.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["TRACKERS", "Trackers", "check_trackers"]

TRACKERS = {"tensorboard": "track", "mlflow": "mlflow", "wandb": "wandb"}
"""The trackers ``TrainConfig.log`` accepts, with the extra that installs each."""


def _names(log: str) -> list[str]:
    names = [n.strip().lower() for n in str(log).split(",") if n.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in TRACKERS]
    if bad or not names:
        raise ValueError(f"log {log!r}: accepted: {', '.join(TRACKERS)} (comma-separated), or none")
    return list(dict.fromkeys(names))


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_trackers(log: str) -> list[str]:
    """The trackers ``log`` names that will be used: a ValueError for an unknown name, or for mlflow / wandb
    when not installed; tensorboard (the default) is left out silently where it is not installed."""
    names = _names(log)
    for n in names:
        if n != "tensorboard" and not _installed(n):
            raise ValueError(f"log {n}: the {n} package is not installed; pip install 'pvt[{TRACKERS[n]}]' "
                             f"(or leave {n} out of --log)")
    return [n for n in names if n != "tensorboard" or _installed(n)]


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers except the epoch (the step)."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Trackers:
    """The open trackers of one run (rank 0): :meth:`log` each committed record, :meth:`close` at the end."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], start_epoch: int = 0):
        self._tb = self._mlflow = self._wandb = None
        self.names = list(names)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run drops the events of epochs it trains again (after a kill)
            self._tb = SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch + 1 if start_epoch else None)
        if "mlflow" in names:
            import mlflow

            if not os.environ.get("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
            self._mlflow = mlflow
            mlflow.start_run(run_name=run_dir.name)
            mlflow.log_params({k: v for k, v in config.items() if not isinstance(v, (dict, list))})
        if "wandb" in names:
            import wandb

            self._wandb = wandb.init(project="pvt", name=run_dir.name, dir=str(run_dir), config=config,
                                     mode=os.environ.get("WANDB_MODE", "offline"), resume="allow" if start_epoch else None)

    def log(self, record: dict[str, Any]) -> None:
        """One epoch's record (its ``epoch`` is the step)."""
        step, values = int(record["epoch"]), _scalars(record)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step=step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()
        self._tb = self._mlflow = self._wandb = None
