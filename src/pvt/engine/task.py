"""The Task interface: what the training engine drives, and what evaluation and prediction ask.

The engine (:mod:`pvt.engine.trainer`) owns everything that is the same for every task: devices,
DistributedDataParallel, mixed precision, the optimiser (AdamW, no decay on norms/biases/embeddings),
the warm-up + cosine schedule, gradient clipping, EMA, the run folder, checkpoints, ``metrics.jsonl``,
resume, progress bars and the learning-curve PNG. A task says what is specific to it: its data, its
model, how one batch becomes a loss, and how a model is scored.

Life cycle of one run (``pvt train --task NAME`` or ``pvt.train(task=NAME)``; the task classes are
registered in :mod:`pvt.tasks`, which builds the task and hands it to the engine)::

    task = TaskClass(cfg); task.validate()  # with the resolved TrainConfig
    train_ds, val_ds = task.build_datasets()  # may raise ValueError (bad data) BEFORE the run dir exists
    model = task.build_model()              # after build_datasets (knows its classes); honours cfg.pretrained
    for each epoch:
        for batch in DataLoader(train_ds, collate_fn=task.collate_fn, sampler=RepeatedAugSampler(...)):
            with autocast:  loss, logs = task.train_step(model, batch, device)   # model may be DDP-wrapped
            (engine: backward, unscale, clip, step, schedule, EMA)
        metrics = task.evaluate(model_or_ema, val_loader, device)   # unwrapped model; on rank 0, or per
                                                                    # process + merge_parts (distributed_eval)
        metrics |= task.end_epoch()                                 # e.g. {"skipped_images": 2}
    weights saved with ``pvt.weights.checkpoint.save_model(model, path, variant=cfg.model, extra=task.checkpoint_extra() | ...)``

A trained model (``pvt eval`` / ``pvt predict``, ``pvt.evaluate`` / ``pvt.predict``) comes back the same way
for every task: ``task = TaskClass.from_checkpoint(metadata)`` (the recorded TrainConfig and
:meth:`Task.restore_extra`), ``model = task.load_model(state, metadata)``, then :meth:`Task.eval_dataset` +
:meth:`Task.evaluate`, or :meth:`Task.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig

__all__ = ["Task"]


class Task:
    """One kind of training (classification, detection, segmentation), driven by the engine.

    Subclasses set the class attributes and override the methods marked *required*. An instance
    lives for one run and may keep state (e.g. the class names found by :meth:`build_datasets`).

    Class attributes:
        name: the registry name (``"classification"``).
        best_metric: key of :meth:`evaluate`'s result that selects ``best.safetensors``; higher is
            better (``"top1"``, ``"bbox_mAP"``, ``"mIoU"``).
        defaults: TrainConfig field values for this task that replace the library-wide (classification,
            DeiT) defaults, e.g. ``{"lr": 1e-4, "epochs": 12, "batch_size": 16, "mixup": 0.0, ...}``.
            YAML files and command-line flags still override them.
        ddp_find_unused_parameters: passed to DistributedDataParallel.
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = ""
    eval_batch_size: ClassVar[int] = 2
    """Images per batch when evaluating a trained model (``pvt eval``'s default)."""
    defaults: ClassVar[dict[str, Any]] = {}
    ddp_find_unused_parameters: ClassVar[bool] = False
    distributed_eval: ClassVar[bool] = False
    """True when the task's scores add up over parts of the validation data (:meth:`evaluate_part`,
    :meth:`merge_parts`): then every process scores its own slice and rank 0 merges the parts. False:
    rank 0 scores all of it with :meth:`evaluate` (e.g. COCO mAP, which needs every detection at once)."""

    def __init__(self, cfg: "TrainConfig"):
        self.cfg = cfg

    # -- configuration ---------------------------------------------------------------------------
    @classmethod
    def config_defaults(cls, user: dict[str, Any]) -> dict[str, Any]:
        """TrainConfig values for this task, given the user's (partial) values: :attr:`defaults`, then
        :meth:`data_defaults`. Applied over the engine's defaults and under the user's values."""
        return {**cls.defaults, **cls.data_defaults(user.get("data"))}

    @classmethod
    def data_defaults(cls, data: str | None) -> dict[str, Any]:
        """TrainConfig values suited to the dataset ``data`` (None: the built-in data), applied over
        :attr:`defaults` and under the user's values. Default: none."""
        return {}

    def validate(self) -> None:
        """Check ``self.cfg.model``, ``self.cfg.task_options`` and task-specific fields; raise ValueError
        naming the key, the value and what is accepted. Called before anything is built or written."""

    def default_clip_grad(self) -> float | None:
        """Gradient-norm clipping when the config leaves ``clip_grad`` unset (None: off)."""
        return None

    def auto_micro_batch(self, model: nn.Module, device: torch.device) -> int:
        """Images per forward/backward pass when ``micro_batch`` is 0 (auto); 0: whole batches (the
        default). Only tasks whose :meth:`split_batch` splits batches gain from this."""
        return 0

    # -- data and model (required) ---------------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` datasets from ``self.cfg.data`` (or the task's built-in data when it is
        None). Raise ValueError / FileNotFoundError for a missing or empty data folder."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The model to train, on CPU, in float32. Loads ``self.cfg.pretrained`` when set."""
        raise NotImplementedError

    collate_fn: Callable[[list[Any]], Any] | None = None
    """Batches samples for both loaders (None: torch's default collate)."""

    # -- steps (required) ------------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        """Move ``batch`` to ``device``, run ``model`` and return ``(scalar loss, logs)``.

        Runs inside the engine's autocast; ``model`` may be wrapped in DDP. ``logs`` are floats shown
        in the progress bar and averaged over the epoch (``loss`` is added by the engine).
        """
        raise NotImplementedError

    def split_batch(self, batch: Any, size: int) -> list[tuple[Any, float]] | None:
        """``batch`` as micro-batches of at most ``size`` images, each with its share of the batch
        (the engine backpropagates ``share * loss`` of each, which sums to the batch's mean-loss
        gradient). None: not split (the default; tasks whose loss is not a per-image mean keep it)."""
        return None

    def batch_size_of(self, batch: Any) -> int:
        """Number of images ``batch`` trains on (for images/s; 0: the engine skips the batch, e.g.
        when every image in it was unreadable). Default: ``len(batch[0])``."""
        return len(batch[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Score ``model`` (unwrapped, eval mode set by the engine) on ``loader``; must contain
        :attr:`best_metric`. Keys are written to ``metrics.jsonl`` with a ``val_`` prefix."""
        raise NotImplementedError

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

    def end_epoch(self) -> dict[str, float]:
        """Extra numbers for this epoch's metrics line (e.g. ``{"skipped_images": 3}``); then reset."""
        return {}

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-able values stored in every saved model's metadata (e.g. class names, image size)."""
        return {}

    def restore_extra(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`checkpoint_extra`: set the state :meth:`build_model` needs."""

    # -- trained models: evaluation and prediction -------------------------------------------------
    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], **overrides: Any) -> "Task":
        """The task a checkpoint was trained with: its recorded TrainConfig (``overrides`` applied, no
        ``pretrained`` weights, CPU) and :meth:`restore_extra` of its metadata."""
        recorded = meta.get("train_config")
        if not isinstance(recorded, dict):
            raise ValueError("the checkpoint records no training config (it was not written by pvt train)")
        cfg = TrainConfig.from_dict({**recorded, "pretrained": None, "device": "cpu", **overrides})
        task = cls(cfg)
        names = meta.get("class_names")
        if "class_names" in meta and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError("its class_names are not a list of names")
        try:
            task.restore_extra(meta)
        except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
            raise ValueError(f"its metadata is malformed ({type(e).__name__}: {e})") from None
        return task

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
        """The data :meth:`evaluate` scores on: the validation split of ``cfg.data`` (the task's built-in
        data when None). Tasks with other named splits accept those."""
        if split != "val":
            raise ValueError(f"{self.name} task: split {split!r}: expected 'val'")
        return self.build_datasets()[1]

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
