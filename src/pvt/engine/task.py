"""The Task interface, in two halves: what the training engine drives (:class:`TrainingTask`) and what
evaluation and prediction of a trained model ask (:class:`InferenceTask`). A task class implements both
(:class:`Task`); the trainer depends only on the first, :mod:`pvt.api`'s evaluate / predict only on the second.

The engine (:mod:`pvt.engine.trainer`) owns everything that is the same for every task: devices,
DistributedDataParallel, mixed precision, the optimiser (AdamW, no decay on norms/biases/embeddings),
the warm-up + cosine schedule, gradient clipping, EMA, the run folder, checkpoints, ``metrics.jsonl``,
resume, progress bars and the learning-curve PNG. A task says what is specific to it: its config and
presets, its data, its model, how one batch becomes a loss, and how a model is scored.

Life cycle of one run (``pvt train --task NAME`` or ``pvt.train(task=NAME)``; the task classes are
registered in :mod:`pvt.tasks`, which resolves the config from the task's preset and builds the task)::

    task = TaskClass(cfg); task.validate()    # cfg.task_config is a TaskClass.config_class
    train_ds, val_ds = task.build_datasets()  # may raise ValueError (bad data) BEFORE the run dir exists
    model = task.build_model()                # after build_datasets (knows its classes); honours cfg.pretrained
    for each epoch:
        for batch in DataLoader(train_ds, collate_fn=task.collate_fn,
                                sampler=RepeatedAugSampler if task.repeated_aug(world_size) else DistributedSampler):
            with autocast:  step = task.train_step(model, batch, device)  # StepResult; model may be DDP-wrapped
            (engine: backward, unscale, clip, step, schedule, EMA; step.images, step.skipped added up)
        metrics = task.evaluate(model_or_ema, val_loader, device)   # unwrapped model; on rank 0, or per
                                                                    # process + merge_parts (distributed_eval)
        (metrics' "skipped_images" joins the training steps' count in the epoch's line)
    weights saved with ``pvt.weights.checkpoint.save_model(model, path, variant=cfg.model, extra=task.checkpoint_extra() | ...)``

A trained model (``pvt eval`` / ``pvt predict``, ``pvt.evaluate`` / ``pvt.predict``) comes back the same way
for every task: ``task = TaskClass.from_checkpoint(metadata)`` (the recorded config and
:meth:`InferenceTask.restore_extra`), ``model = task.load_model(state, metadata)``, then
:meth:`InferenceTask.eval_dataset` + :meth:`InferenceTask.evaluate`, or :meth:`InferenceTask.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .config import TaskConfig, TrainConfig

__all__ = ["Task", "TrainingTask", "InferenceTask", "StepResult", "SKIPPED"]

SKIPPED = "skipped_images"
"""The key of an evaluation's result (and of an epoch's metrics line) that counts the images left out
because they could not be read."""


@dataclass
class StepResult:
    """What one :meth:`TrainingTask.train_step` did."""

    loss: Tensor | None
    """The scalar loss to backpropagate; None when no image of the batch could be trained on."""
    images: int
    """Images trained on (for images/s)."""
    skipped: int = 0
    """Images of the batch left out because they could not be read or decoded."""
    logs: dict[str, float] = field(default_factory=dict)
    """Floats shown in the progress bar (``loss`` is added by the engine)."""


class _TaskBase:
    """What both halves share: the name, the config and the model a task builds and scores."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    """The dataclass of this task's own values (``cfg.task_config`` is one)."""
    collate_fn: Callable[[list[Any]], Any] | None = None
    """Batches samples for every loader (None: torch's default collate)."""

    def __init__(self, cfg: TrainConfig):
        if not isinstance(cfg.task_config, self.config_class):
            raise TypeError(f"the {self.name} task needs a config whose task_config is a {self.config_class.__name__}, "
                            f"got {type(cfg.task_config).__name__} (build it with pvt.tasks.resolve_config)")
        self.cfg = cfg
        """The engine's values (model, data, schedule, ...)."""
        self.tcfg = cfg.task_config
        """This task's own values (a :attr:`config_class`)."""

    def build_model(self) -> nn.Module:
        """The model (*required*), on CPU, in float32. Loads ``self.cfg.pretrained`` when set."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Score ``model`` (*required*; unwrapped, eval mode set by the caller) on ``loader``; must contain
        ``best_metric``. Images left out as unreadable are counted under :data:`SKIPPED` (when any). Keys are
        written to ``metrics.jsonl`` with a ``val_`` prefix."""
        raise NotImplementedError


class TrainingTask(_TaskBase):
    """The half the trainer drives: config and presets, data, model, steps, scores, schedule, checkpoint
    extras. Subclasses set the class attributes and override the methods marked *required*. An instance
    lives for one run and may keep state (e.g. the class names found by :meth:`build_datasets`).

    Class attributes:
        best_metric: key of :meth:`evaluate`'s result that selects ``best.safetensors``; higher is
            better (``"top1"``, ``"bbox_mAP"``, ``"mIoU"``).
        presets: the task's named recipes, each complete: a value for every key of
            :data:`~pvt.engine.config.RECIPE_KEYS` and of :attr:`config_class` that the recipe sets
            (YAML files and flags override them).
        ddp_find_unused_parameters: passed to DistributedDataParallel.
    """

    best_metric: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    ddp_find_unused_parameters: ClassVar[bool] = False
    distributed_eval: ClassVar[bool] = False
    """True when the task's scores add up over parts of the validation data (:meth:`evaluate_part`,
    :meth:`merge_parts`): then every process scores its own slice and rank 0 merges the parts. False:
    rank 0 scores all of it with :meth:`evaluate` (e.g. COCO mAP, which needs every detection at once)."""

    # -- configuration ---------------------------------------------------------------------------
    @classmethod
    def preset_name(cls, user: dict[str, Any]) -> str:
        """The preset for the user's (partial) values, e.g. by whether ``data`` is given. Default: the first."""
        return next(iter(cls.presets))

    @classmethod
    def recipe(cls, user: dict[str, Any]) -> dict[str, Any]:
        """The config values the run starts from, under the user's: :meth:`preset_name`'s preset."""
        return dict(cls.presets[cls.preset_name(user)]) if cls.presets else {}

    def validate(self) -> None:
        """Check ``self.cfg.model``, the task options and task-specific values; raise ValueError naming the
        key, the value and what is accepted. Called before anything is built or written."""

    def default_clip_grad(self) -> float | None:
        """Gradient-norm clipping when the config leaves ``clip_grad`` unset (None: off)."""
        return None

    def auto_micro_batch(self, model: nn.Module, device: torch.device) -> int:
        """Images per forward/backward pass when ``micro_batch`` is 0 (auto); 0: whole batches (the
        default). Only tasks whose :meth:`split_batch` splits batches gain from this."""
        return 0

    def repeated_aug(self, world_size: int) -> bool:
        """Whether the training data is sampled with repeated augmentation (each image 3 times per epoch,
        the copies spread over the ``world_size`` processes; :mod:`pvt.engine.samplers`); default: no,
        every image once per epoch."""
        return False

    # -- data and model (required) ---------------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` datasets from ``self.cfg.data`` (or the task's built-in data when it is
        None). Raise ValueError / FileNotFoundError for a missing or empty data folder. A data set's
        ``unreadable`` list (files found unreadable when it was listed) is counted in the first epoch's
        skipped images."""
        raise NotImplementedError

    # -- steps (required) ------------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        """Move ``batch`` to ``device``, run ``model`` and return its loss, the images it trained on and
        the images it left out. Runs inside the engine's autocast; ``model`` may be wrapped in DDP."""
        raise NotImplementedError

    def split_batch(self, batch: Any, size: int) -> list[tuple[Any, float]] | None:
        """``batch`` as micro-batches of at most ``size`` images, each with its share of the batch
        (the engine backpropagates ``share * loss`` of each, which sums to the batch's mean-loss
        gradient). None: not split (the default; tasks whose loss is not a per-image mean keep it)."""
        return None

    def evaluate_part(self, model: nn.Module, loader: DataLoader, device: torch.device) -> Any:
        """Scores of the images in ``loader`` in a form :meth:`merge_parts` can add up (e.g. counts and
        sums, picklable). Required when :attr:`distributed_eval` is set."""
        raise NotImplementedError

    def merge_parts(self, parts: list[Any]) -> dict[str, float]:
        """:meth:`evaluate`'s result for the union of the images scored by ``parts`` (one per process, in
        rank order). Required when :attr:`distributed_eval` is set."""
        raise NotImplementedError

    def build_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any | None:
        """A learning-rate schedule other than the engine's warm-up + cosine (None: that one).

        The object needs timm's scheduler methods ``step_update(num_updates)`` (called after every
        optimiser step), ``state_dict()`` and ``load_state_dict()``. The dense tasks return step
        (detection) and poly (segmentation) schedules here.
        """
        return None

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-able values stored in every saved model's metadata (e.g. class names, image size)."""
        return {}


class InferenceTask(_TaskBase):
    """The half a trained model is used through: rebuilt from its checkpoint, scored, asked to predict."""

    eval_batch_size: ClassVar[int] = 2
    """Images per batch when evaluating a trained model (``pvt eval``'s default)."""

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], **overrides: Any) -> "InferenceTask":
        """The task a checkpoint was trained with: its recorded config (``overrides`` applied, no
        ``pretrained`` weights, CPU) and :meth:`restore_extra` of its metadata. Recorded keys that neither
        config declares are left out (a checkpoint of an older version records every task's keys)."""
        recorded = meta.get("train_config")
        if not isinstance(recorded, dict):
            raise ValueError("the checkpoint records no training config (it was not written by pvt train)")
        data = {**recorded, "pretrained": None, "device": "cpu", **overrides}
        known = set(TrainConfig.field_names()) | set(cls.config_class.field_names())
        cfg = TrainConfig.from_dict(data, cls.config_class, former=set(data) - known)
        task = cls(cfg)
        names = meta.get("class_names")
        if "class_names" in meta and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError("its class_names are not a list of names")
        try:
            task.restore_extra(meta)
        except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
            raise ValueError(f"its metadata is malformed ({type(e).__name__}: {e})") from None
        return task

    def restore_extra(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`TrainingTask.checkpoint_extra`: set the state :meth:`build_model` needs."""

    def load_model(self, state: dict[str, Tensor], meta: dict[str, Any], source: str | Path) -> nn.Module:
        """The trained model of a checkpoint: :meth:`build_model`, then its tensors (a ValueError naming
        ``source`` when they do not fit). The model is first built on the meta device (no tensor memory) and
        its shapes compared with the file's, so recorded values that do not fit the tensors (e.g. a million
        class names) never allocate a model larger than the file."""
        with torch.device("meta"):
            skeleton = self.build_model()
        want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        del skeleton
        wrong = [k for k, v in want.items() if k in state and tuple(state[k].shape) != v]
        missing = [k for k in want if k not in state]
        if wrong or missing:
            k = (wrong or missing)[0]
            raise ValueError(f"checkpoint {str(source)!r} does not match its own config: {len(wrong)} tensors of "
                             f"another shape and {len(missing)} missing, e.g. {k} "
                             + (f"{list(state[k].shape)} vs {list(want[k])}" if wrong else "(missing)"))
        model = self.build_model()
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"checkpoint {str(source)!r} does not match its own config: "
                             f"{str(e).strip().splitlines()[0]}") from None
        return model

    def eval_dataset(self, split: str = "val") -> Dataset:
        """The data :meth:`evaluate` scores on (*required*): the ``split`` of ``cfg.data`` (the task's built-in
        data when None); a ValueError naming the accepted splits otherwise."""
        raise NotImplementedError

    def predict(self, model: nn.Module, images: Sequence[str | Path], device: torch.device, *,
                topk: int = 5, score_thresh: float = 0.3, out_dir: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """One JSON-able record per image, in order (``{"image": path, ...}``; ``{"image": path, "error":
        reason}`` for one that cannot be read); with ``out_dir``, also a drawing of each prediction there. ``topk`` and
        ``score_thresh`` apply to the tasks they fit; ``progress(done, total)`` is called as images are
        done. Memory stays bounded however many images there are (they are read in batches)."""
        raise NotImplementedError

    def evaluation_details(self) -> dict[str, Any]:
        """What the last :meth:`evaluate` found beyond its scores (e.g. per-class IoU), for ``pvt eval``."""
        return {}

    @classmethod
    def summary(cls, metrics: dict[str, Any]) -> str:
        """A one-line human summary of :meth:`evaluate`'s result (default: every number, rounded)."""
        return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))


class Task(TrainingTask, InferenceTask):
    """A task class: both halves (what every registered task in :mod:`pvt.tasks` subclasses)."""
