"""The training tasks: what is specific to classification, detection, instance segmentation and
semantic segmentation (data, model, loss, score, prediction), as plug-ins of :mod:`pvt.engine`.

The registry is this one explicit table; a task module is imported only when its task is asked for,
so a classification run never loads COCO, ADE20K or the dense metrics.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..engine.config import TrainConfig, resolve_layers
from ..engine.task import Task
from ..naming import unknown_name

__all__ = ["TASKS", "list_tasks", "get_task", "create_task", "resolve_config"]

TASKS: dict[str, str] = {
    "classification": "pvt.tasks.classification:ClassificationTask",
    "detection": "pvt.tasks.detection:DetectionTask",
    "instance": "pvt.tasks.detection:InstanceTask",
    "segmentation": "pvt.tasks.segmentation:SegmentationTask",
}
"""Task name -> ``module:class`` of its :class:`~pvt.engine.task.Task`."""


def list_tasks() -> list[str]:
    """The task names, sorted."""
    return sorted(TASKS)


def get_task(name: str) -> type[Task]:
    """The Task class registered as ``name``; a ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise unknown_name("task", name, TASKS, f"accepted: {', '.join(sorted(TASKS))}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_task(cfg: TrainConfig) -> Task:
    """The task ``cfg.task`` set up for ``cfg`` (its options validated)."""
    task = get_task(cfg.task)(cfg)
    task.validate()
    return task


def resolve_config(yaml_path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A checked :class:`TrainConfig`: the engine's defaults < the task's defaults for the model and data
    < a YAML file < ``overrides`` (see :func:`pvt.engine.config.resolve_layers`), validated by its task
    (model name, task options)."""
    cfg = resolve_layers(yaml_path, task_defaults=lambda user: get_task(user.get("task", "classification"))
                         .config_defaults(user), **overrides)
    create_task(cfg)
    return cfg
