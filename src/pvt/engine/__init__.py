"""The task-generic training engine: the Task protocol, the run config and the trainer.

``TrainConfig`` (:mod:`.config`) and ``Task`` (:mod:`.task`) are the contract between the engine and
the tasks of :mod:`pvt.tasks`; the :class:`~.trainer.Trainer` drives any Task. Nothing here imports a
task: the caller builds the task and hands it over.
"""

from .config import TrainConfig, resolve_layers
from .task import Task
from .trainer import Trainer, TrainResult

__all__ = ["TrainConfig", "resolve_layers", "Task", "Trainer", "TrainResult"]
