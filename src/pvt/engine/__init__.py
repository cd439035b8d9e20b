"""The task-generic training engine: config, task registry, trainer, checkpoints.

``TrainConfig`` (:mod:`.config`) and the ``Task`` interface (:mod:`.task`) are the contract between the
engine and the tasks (classification here, detection and segmentation in :mod:`pvt.tasks`).
"""

from .config import TrainConfig, resolve_config
from .task import Task, get_task, list_tasks, register_task
from .trainer import Trainer, TrainResult

__all__ = ["TrainConfig", "resolve_config", "Task", "get_task", "list_tasks", "register_task", "Trainer", "TrainResult"]
