"""The task-generic training engine: the Task protocol, the run config and the trainer.

``TrainConfig`` with a task's ``TaskConfig`` (:mod:`.config`) and ``TrainingTask`` / ``InferenceTask``
(:mod:`.task`) are the contract between the engine and the tasks of :mod:`pvt.tasks`; the :class:`~.trainer.Trainer` drives any Task. Nothing here imports a
task: the caller builds the task and hands it over.
"""

from ..base.lazy import lazy_attributes

__all__ = ["TrainConfig", "TaskConfig", "Task", "TrainingTask", "InferenceTask", "StepResult", "Trainer",
           "TrainResult"]

_HOMES = {"TrainConfig": "config", "TaskConfig": "config", "Task": "task", "TrainingTask": "task",
          "InferenceTask": "task", "StepResult": "task", "Trainer": "trainer", "TrainResult": "trainer"}
"""Where each name lives: loaded on first use, so ``pvt.engine.config`` (the ``pvt train`` flags) comes
without the trainer's torch import."""

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
