"""The training loop shared by every task: one run folder, resumable, on one device or many.

The run folder (its files, the order an epoch is committed in, reading it back) is
:class:`pvt.weights.run_folder.RunFolder`. The weights are checked to be finite before an epoch is
committed. Ctrl-C and SIGTERM stop the run at once, outside the commit: the epoch in flight is dropped and
the last committed epoch stays as it was, so a resumed run ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, SequentialSampler

from ..base.io import refuse_link, remove_temporaries
from ..weights.checkpoint import read_own_format, save_model
from ..weights.run_folder import RunFolder
from .config import TrainConfig
from .curves import plot_curves
from .distributed import all_reduce_mean, barrier, broadcast_object, gather_objects, init_distributed
from .divergence import TrainingDiverged, finite_batch, non_finite
from .progress import ProgressLines
from .resume import RESUME_MAY_CHANGE, resume_config
from .samplers import REPEATS, RankSlice, RepeatedAugSampler, samples_per_rank
from .signals import Interrupted, StopSignals, stop_signals
from .state import load_state, missing_keys, rng_state, save_state, set_rng_state
from .task import SKIPPED, StepResult, TrainingTask
from .tracking import Trackers, check_trackers

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "RESUME_MAY_CHANGE", "param_groups", "amp_dtype"]




log = logging.getLogger("pvt.train")


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: float, min_lr: float,
                    warmup_lr: float) -> Any:
    """The default schedule, per step: linear warm-up from ``warmup_lr`` over ``warmup`` steps (rounded; at
    most ``total - 1``), then a cosine to ``min_lr`` over the rest. A run no longer than its warm-up
    leaves the cosine a single step, which is what it should do there: timm's warning that the cosine
    "will have no effect" is kept out of the log."""
    from timm.scheduler import CosineLRScheduler

    warmup_steps = min(int(round(warmup)), total - 1)
    timm_log = logging.getLogger("timm.scheduler.cosine_lr")
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup_steps), lr_min=min_lr,
                                 warmup_t=warmup_steps, warmup_lr_init=warmup_lr, warmup_prefix=True,
                                 t_in_epochs=False)
    finally:
        timm_log.setLevel(level)


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> RunFolder:
        """The run folder, to read the run back from."""
        return RunFolder(self.run_dir)

    @property
    def last_checkpoint(self) -> Path:
        return self.folder.last

    @property
    def best_checkpoint(self) -> Path:
        return self.folder.best


@dataclass
class _Run:
    """What one run's loop works on: set up by the :class:`Trainer`'s steps, advanced by its epochs."""

    model: nn.Module
    ddp_model: nn.Module
    """The model as the training step sees it (wrapped by DistributedDataParallel under torchrun)."""
    train_ds: Dataset
    val_ds: Dataset
    sampler: Any = None
    train_loader: Any = None
    val_loader: Any = None
    steps: int = 0
    """Optimiser steps per epoch."""
    lr: float = 0.0
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    ema: Any = None
    clip: float | None = None
    start_epoch: int = 0
    best: float = -math.inf
    updates: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, decay then none: which parameters decay is timm's ``param_groups_weight_decay``
    (not 1-D parameters such as norms, not biases, not the names in the model's ``no_weight_decay()``:
    position embeddings and the class token). Both groups always exist, in this order, so a run's
    optimizer state has one shape whatever the decay. A model with ``lr_scales`` (``{name prefix:
    factor}``, e.g. SegFormer's ``{"head.": 10.0}``) gets two more groups per prefix, with ``lr_scale``
    (timm's key, which the schedulers multiply every lr by)."""
    from timm.optim import param_groups_weight_decay

    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    # a non-zero decay only to tell timm's two groups apart (with 0 it returns one group)
    decays = {id(p) for g in param_groups_weight_decay(model, 1.0, no_weight_decay_list=skip)
              if g["weight_decay"] for p in g["params"]}
    scales: dict[str, float] = dict(getattr(model, "lr_scales", {}))
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((f for prefix, f in scales.items() if name.startswith(prefix)), 1.0)
            groups.setdefault((scale, id(p) in decays), []).append(p)
    out = [{"params": groups.get((1.0, True), []), "weight_decay": weight_decay},
           {"params": groups.get((1.0, False), []), "weight_decay": 0.0}]
    for (scale, decay), params in groups.items():
        if scale != 1.0:
            out.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
    return out


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full precision)."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("config value amp='fp16': float16 autocast needs a GPU; accepted on CPU: none, bf16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


class Trainer:
    """Train ``task`` with ``cfg`` (a fresh run), or continue the run in the folder ``resume`` (then
    ``cfg`` is :meth:`resume_config` of that folder).

    Everything that can fail on bad input (config, data, weights) is checked before the run folder is
    created; a run that fails before its first checkpoint removes its folder again.
    """

    def __init__(self, cfg: TrainConfig, task: TrainingTask, *, resume: str | Path | None = None, quiet: bool = False,
                 fresh_optimizer: bool = False):
        self.quiet = quiet
        self.resume_dir = Path(resume) if resume is not None else None
        self.fresh_optimizer = fresh_optimizer
        if fresh_optimizer and resume is None:
            raise ValueError("fresh_optimizer (--fresh-optimizer) only applies with resume (--resume RUN_DIR)")
        self._state: dict[str, Any] | None = None
        self._from_weights: Path | None = None
        """With ``fresh_optimizer``: continue from this weights file (state.pt being unreadable)."""
        self._done = 0
        """Epochs committed in the run folder (state.pt written)."""
        self._in_flight = False
        """Whether an epoch is being trained (or saved) and not yet committed."""
        self._history: list[str] = []
        """Comment lines config.yaml gains on this resume (what changed, and when)."""
        self._signals = StopSignals()
        self.cfg = cfg
        self.dist, self.device = init_distributed(cfg.device)
        self.task = task
        self.amp = amp_dtype(cfg.amp, self.device)

    # ------------------------------------------------------------------ setup
    resume_config = staticmethod(resume_config)

    def _new_run_dir(self) -> Path:
        cfg = self.cfg
        name = cfg.name or f"{cfg.model}-{cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        name = broadcast_object(name, self.dist)
        cfg.name = name  # config.yaml records the folder it describes
        run_dir = Path(cfg.output).expanduser() / name
        taken = None
        if self.dist.is_main:  # (rank 0 decides, before it makes the folder that the others would see)
            if RunFolder(run_dir).taken():
                taken = (f"run folder {str(run_dir)!r} already exists; choose another --name or continue it with "
                         "--resume")
            elif run_dir.is_dir():
                remove_temporaries(run_dir)  # all a run killed before its config.yaml was written left
        taken = broadcast_object(taken, self.dist)
        if taken:
            raise ValueError(taken)
        return run_dir

    def _setup_logging(self, run_dir: Path) -> logging.Handler | None:
        if not self.dist.is_main:
            return None
        handler = RunFolder(run_dir).log_handler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for name in ("pvt.train", "pvt.data"):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
        return handler

    def _say(self, msg: str) -> None:
        """One line to stdout (rank 0, unless quiet) and to train.log."""
        if not self.dist.is_main:
            return
        log.info(msg)
        if not self.quiet:
            print(msg, flush=True)

    # ------------------------------------------------------------------ run
    def fit(self) -> TrainResult:
        """Run (or continue) the training; returns the run folder, its metrics and its best epoch.

        Ctrl-C and SIGTERM raise :class:`~pvt.engine.signals.Interrupted` (a KeyboardInterrupt) after saying
        what the run folder keeps; a non-finite loss or weights raise :class:`TrainingDiverged`."""
        with stop_signals() as self._signals:
            try:
                return self._fit_in_folder()
            finally:
                self._signals = StopSignals()

    def _fit_in_folder(self) -> TrainResult:
        """Check the input, make (or reopen) the run folder, run; on failure clean up and report."""
        cfg, d = self.cfg, self.dist
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _seed(cfg.seed + d.rank)

        # everything that can fail on bad input happens before the run folder exists
        trackers = check_trackers(cfg.log) if d.is_main else []
        train_ds, val_ds = self.task.build_datasets()
        # files a data set found unreadable when it was listed: counted once, in the first epoch's line
        self._listed_unreadable = sum(len(getattr(ds, "unreadable", ())) for ds in (train_ds, val_ds)) if d.is_main else 0
        model = self.task.build_model()
        with contextlib.ExitStack() as lock:  # rank 0 holds the run folder's lock until the run ends
            if self.resume_dir is not None:
                run_dir, created = self.resume_dir, False
                if d.is_main:
                    lock.enter_context(RunFolder(run_dir).lock())  # before anything in it is touched
                    remove_temporaries(run_dir)  # left by a writer that was killed
                self._load_resume_state(run_dir)
            else:
                run_dir, created = self._new_run_dir(), True
            self.run_dir, self.folder = run_dir, RunFolder(run_dir)
            if d.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                if created:
                    lock.enter_context(self.folder.lock())  # (a second process racing for the same name stops here)
                    try:
                        self._write_record(0)  # first: a folder with a config.yaml can always be resumed
                    except BaseException:
                        with self._signals.shield():
                            _remove_run_dir(run_dir)
                        raise
            barrier(d)
            handler = None
            self._trackers = None
            try:
                handler = self._setup_logging(run_dir)
                if trackers:
                    self._trackers = Trackers(trackers, run_dir, cfg.to_dict(), self.folder.epoch())
                return self._fit(model, train_ds, val_ds)
            except BaseException as e:
                with self._signals.shield():  # a second Ctrl-C cannot cut the clean-up short
                    if self._trackers is not None:
                        self._trackers.close()  # before a failed new run's folder is removed
                        self._trackers = None
                    self._after_failure(e, created)
                raise
            finally:
                with self._signals.shield():
                    if self._trackers is not None:
                        self._trackers.close()
                    if handler is not None:
                        for name in ("pvt.train", "pvt.data"):
                            logging.getLogger(name).removeHandler(handler)
                        handler.close()

    def _load_resume_state(self, run_dir: Path) -> None:
        """What a resume continues from: ``state.pt``; else (``fresh_optimizer``) the weights of
        ``last.safetensors``; else, when no epoch ever finished, nothing (the run starts over). An
        unreadable state without ``fresh_optimizer`` is a ValueError that names the way on."""
        folder = RunFolder(run_dir)
        state, last = folder.state, folder.last
        problem = None
        if state.exists():
            refuse_link(state)  # (a link planted in the folder is not followed)
            try:
                self._state = load_state(state)
            except ValueError as e:
                problem = str(e)
            if self._state is not None and (missing := missing_keys(self._state)):
                problem = f"{state} is not a training state written by pvt train (it lacks {', '.join(missing)})"
                self._state = None
        elif last.exists():
            problem = f"its {state} is missing"
        if problem is None:
            if self.fresh_optimizer:
                raise ValueError(f"--fresh-optimizer is for a run whose state.pt is unreadable; {str(run_dir)!r} has "
                                 f"{'an intact one' if state.exists() else 'finished no epoch'}: resume it without it")
            return
        epoch = folder.epoch_of(last)
        if epoch is None:
            raise ValueError(f"cannot resume {str(run_dir)!r}: {problem}; and it has no intact {last.name} "
                             "recording its epoch to continue from: start a new run")
        if not self.fresh_optimizer:
            raise ValueError(
                f"cannot resume {str(run_dir)!r}: {problem}. Its weights after epoch {epoch} are intact in "
                f"{last.name}: continue from them with a fresh optimiser state with `pvt train --resume "
                f"{run_dir} --fresh-optimizer` (the run then no longer equals an uninterrupted one)"
            )
        self._state, self._from_weights = None, last

    def _after_failure(self, e: BaseException, created: bool) -> None:
        """A run that stops (error, Ctrl-C, SIGTERM): a folder this run created and no epoch finished in is
        removed (the same command starts it again); one with finished epochs is kept as it is. An
        interruption is reported: which epoch was dropped, what the folder keeps, how to continue (by rank 0,
        for every process)."""
        if not self.dist.is_main:
            if isinstance(e, KeyboardInterrupt):
                e.reported = True  # type: ignore[attr-defined]
            return
        run_dir = self.run_dir
        removed = created and self._done == 0 and not self.folder.state.exists()
        if removed:
            _remove_run_dir(run_dir)  # nothing worth keeping
        if not isinstance(e, KeyboardInterrupt):
            return
        how = e.name if isinstance(e, Interrupted) else "SIGINT"
        done, total = self._done, self.cfg.epochs
        when = f"during epoch {done + 1}: that epoch is dropped" if self._in_flight else f"after epoch {done} was saved"
        if removed:
            msg = (f"interrupted ({how}) during epoch 1: no epoch had finished, so the run folder {run_dir} was "
                   "removed; the same command starts it again")
        elif done == 0:
            msg = (f"interrupted ({how}) during epoch 1: no epoch has finished yet; continue (start over) with: "
                   f"pvt train --resume {run_dir}")
        elif done >= total:
            msg = f"interrupted ({how}) after the last epoch was saved: {run_dir} holds the whole run ({total} epochs)"
        else:
            msg = (f"interrupted ({how}) {when}; {run_dir} keeps its {done} finished epoch{'s' if done > 1 else ''} "
                   f"as they were; continue with: pvt train --resume {run_dir}")
        log.info(msg)
        print(msg, file=sys.stderr, flush=True)
        e.reported = True  # type: ignore[attr-defined]

    def _fit(self, model: nn.Module, train_ds: Dataset, val_ds: Dataset) -> TrainResult:
        """The run, step by step: loaders, optimisation, resume, the record, DDP, then the epochs."""
        run = _Run(model=model, ddp_model=model, train_ds=train_ds, val_ds=val_ds)
        self._place_model(run)
        self._make_loaders(run)
        self._make_optimisation(run)
        if self._state is not None:
            self._restore(run, self._state)
        elif self._from_weights is not None:
            self._restore_weights(run, self._from_weights)
        self._done = run.start_epoch
        if run.start_epoch:
            self._repair_published(run)
            if run.start_epoch >= self.cfg.epochs:
                self._say(f"run {self.run_dir} already finished {run.start_epoch} of {self.cfg.epochs} epochs")
                return TrainResult(self.run_dir, run.records, self._best_record(run.records))
            self._say(f"resumed {self.run_dir} at epoch {run.start_epoch + 1}/{self.cfg.epochs}")
        elif self.resume_dir is not None:
            self._say(f"no epoch of {self.run_dir} had finished: starting it over")
        if self.resume_dir is not None:
            self._write_record(run.start_epoch)
        self._wrap_ddp(run)
        self._announce(run)
        for epoch in range(run.start_epoch, self.cfg.epochs):
            self._epoch(run, epoch)
        result = TrainResult(self.run_dir, run.records, self._best_record(run.records))
        if self.dist.is_main and result.best:
            key = f"val_{self.task.best_metric}"
            self._say(f"done: best {key} {result.best[key]:.2f} at epoch {result.best['epoch']}; "
                      f"run folder {self.run_dir}")
        return result

    # ------------------------------------------------------------------ the run's steps
    def _place_model(self, run: "_Run") -> None:
        run.model.to(self.device)
        if self.cfg.channels_last:
            run.model.to(memory_format=torch.channels_last)

    def _make_loaders(self, run: "_Run") -> None:
        """Training: every process reads its share of each epoch, in an order that is a function of the
        seed and the epoch, the last partial batch dropped: the repeated-augmentation sampler where the task
        asks for it (:meth:`TrainingTask.repeated_aug`) or the plain distributed one. A streaming data set (shards: an
        IterableDataset with ``distribute``) splits itself over the processes and loader workers, reading
        as many samples per process as the samplers would, so folder and shard runs take the same steps.

        Evaluation: with a task whose scores merge (:attr:`Task.distributed_eval`), every process scores
        an unpadded slice of the validation data (each image exactly once); otherwise rank 0 scores it all.

        Training loader workers start afresh each epoch (not persistent) and the validation loader draws
        its worker seeds from its own generator: the main process's random state, which ``state.pt``
        saves, then alone decides every augmentation, so a resumed run augments as an uninterrupted one.
        """
        cfg, d, task = self.cfg, self.dist, self.task
        repeated = task.repeated_aug(d.world_size)  # the task's rule (classification: on under >1 process)
        per = samples_per_rank(len(run.train_ds), d.world_size, repeated)
        run.steps = per // cfg.batch_size
        if run.steps == 0:
            raise ValueError(f"config value batch_size={cfg.batch_size}: larger than the {per} training images per "
                             f"process and epoch; accepted: 1..{max(1, per)}")
        kw: dict[str, Any] = dict(num_workers=cfg.workers, collate_fn=task.collate_fn,
                                  pin_memory=self.device.type == "cuda")
        if isinstance(run.train_ds, IterableDataset):
            if not hasattr(run.train_ds, "distribute"):
                raise TypeError("a streaming data set needs distribute(rank, world_size, ...) and set_epoch(epoch) "
                                "(see pvt.data.shards.ShardDataset)")
            run.train_ds.distribute(d.rank, d.world_size, samples=run.steps * cfg.batch_size, batch_size=cfg.batch_size,
                                    repeats=REPEATS if repeated else 1, shuffle=cfg.shuffle, seed=cfg.seed,
                                    buffer=cfg.shuffle_buffer)
            run.sampler = run.train_ds  # set_epoch
            run.train_loader = DataLoader(run.train_ds, batch_size=cfg.batch_size, drop_last=True, **kw)
        else:
            if repeated:
                run.sampler = RepeatedAugSampler(len(run.train_ds), d.world_size, d.rank, seed=cfg.seed,
                                                 shuffle=cfg.shuffle)
            else:
                run.sampler = DistributedSampler(run.train_ds, num_replicas=d.world_size, rank=d.rank,
                                                 shuffle=cfg.shuffle, seed=cfg.seed, drop_last=True)
            run.train_loader = DataLoader(run.train_ds, batch_size=cfg.batch_size, sampler=run.sampler,
                                          drop_last=True, **kw)
        if not (task.distributed_eval or d.is_main):
            return
        world, rank = (d.world_size, d.rank) if task.distributed_eval else (1, 0)
        val_kw: dict[str, Any] = dict(kw, persistent_workers=cfg.workers > 0,
                                      generator=torch.Generator().manual_seed(cfg.seed))
        if isinstance(run.val_ds, IterableDataset):
            run.val_ds.distribute(rank, world)  # every image of the process's stretch, once
            run.val_loader = DataLoader(run.val_ds, batch_size=cfg.batch_size, **val_kw)
        else:
            sampler = RankSlice(len(run.val_ds), world, rank) if world > 1 else SequentialSampler(run.val_ds)
            run.val_loader = DataLoader(run.val_ds, batch_size=cfg.batch_size, sampler=sampler, **val_kw)

    def _make_optimisation(self, run: "_Run") -> None:
        """AdamW on the parameter groups, the task's schedule (else warm-up + cosine per step), the fp16
        gradient scaler, EMA, clipping and micro-batches."""
        from timm.utils import ModelEmaV3

        cfg, task, steps = self.cfg, self.task, run.steps
        run.lr = cfg.peak_lr(self.dist.world_size)
        run.optimizer = torch.optim.AdamW(param_groups(run.model, cfg.weight_decay), lr=run.lr, eps=cfg.opt_eps)
        run.scheduler = task.build_scheduler(run.optimizer, steps)
        if run.scheduler is None:
            run.scheduler = cosine_schedule(run.optimizer, cfg.epochs * steps, cfg.warmup_epochs * steps,
                                            cfg.min_lr, cfg.warmup_lr)
        run.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        run.ema = ModelEmaV3(run.model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        run.clip = (cfg.clip_grad if cfg.clip_grad is not None else task.default_clip_grad()) or None
        self.micro_batch = cfg.micro_batch or task.auto_micro_batch(run.model, self.device)

    def _restore(self, run: "_Run", st: dict[str, Any]) -> None:
        """Continue from a saved state: weights, optimiser, schedule (stretched to a longer ``epochs``),
        scaler, EMA, counters, this process's random state and the metrics of the saved epochs."""
        from timm.scheduler import CosineLRScheduler

        where = f"cannot resume {str(self.run_dir)!r}"
        try:
            run.model.load_state_dict(st["model"])
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{where}: its saved model does not fit the one built from the current config and data (did the "
                f"classes change?): {str(e).strip().splitlines()[-1].strip()}"
            ) from None
        bad = non_finite(run.model)
        if bad:
            raise ValueError(f"{where}: state.pt holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): it "
                             "was saved from a diverged run")
        try:
            run.optimizer.load_state_dict(st["optimizer"])
            run.scheduler.load_state_dict(st["scheduler"])
            run.scaler.load_state_dict(st["scaler"])
            if run.ema is not None and st.get("ema") is not None:
                run.ema.module.load_state_dict(st["ema"])
            run.start_epoch, run.best, run.updates = int(st["epoch"]), float(st["best"]), int(st["updates"])
            if len(st["rng"]) == self.dist.world_size:
                set_rng_state(st["rng"][self.dist.rank])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{where}: its state.pt does not fit this run ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'no detail'})") from None
        if isinstance(run.scheduler, CosineLRScheduler):
            run.scheduler.t_initial = max(1, self.cfg.epochs * run.steps - run.scheduler.warmup_t)
        run.records = self.folder.committed_records(run.start_epoch)

    def _restore_weights(self, run: "_Run", path: Path) -> None:
        """``--fresh-optimizer``: continue after the epoch ``path`` records, from its weights, with a fresh
        optimiser, scaler and EMA (the EMA starting at the weights), the schedule at that epoch's step and the
        random state seeded from the config's seed and that epoch."""
        from timm.scheduler import CosineLRScheduler

        own = read_own_format(path)
        epoch = self.folder.epoch_of(path)
        if own is None or epoch is None:
            raise ValueError(f"cannot resume {str(self.run_dir)!r} from {path}: not a pvt train checkpoint recording "
                             "its epoch")
        try:
            run.model.load_state_dict(own[0])
        except RuntimeError as e:
            raise ValueError(f"cannot resume {str(self.run_dir)!r} from {path}: its weights do not fit the model built "
                             f"from the config: {str(e).strip().splitlines()[-1].strip()}") from None
        bad = non_finite(run.model)
        if bad:
            raise ValueError(f"cannot resume {str(self.run_dir)!r} from {path}: it holds non-finite weights "
                             f"({len(bad)} tensors, e.g. {bad[0]})")
        if run.ema is not None:
            run.ema.module.load_state_dict(run.model.state_dict())
        run.start_epoch, run.updates = epoch, epoch * run.steps
        if isinstance(run.scheduler, CosineLRScheduler):
            run.scheduler.t_initial = max(1, self.cfg.epochs * run.steps - run.scheduler.warmup_t)
        run.scheduler.step_update(run.updates)
        run.records = self.folder.committed_records(epoch)
        best = self._best_record(run.records)
        run.best = float(best[f"val_{self.task.best_metric}"]) if best else -math.inf
        _seed(self.cfg.seed + self.dist.rank + 1_000 * epoch)
        self._history.append(f"# resumed after epoch {epoch} from {path.name} with a fresh optimiser state "
                             f"({RunFolder.STATE} was unreadable)")
        self._say(f"{RunFolder.STATE} was unreadable: continuing after epoch {epoch} from {path} with a fresh optimiser state")

    def _repair_published(self, run: "_Run") -> None:
        """On resume: make ``last.safetensors`` hold the committed epoch and ``best.safetensors`` the best one
        in metrics.jsonl, rewriting from the restored weights what a kill after the commit left behind."""
        if not self.dist.is_main:
            return
        n, best_epoch = run.start_epoch, int(self._best_record(run.records).get("epoch", 0))
        last, best = self.folder.last, self.folder.best
        if self.folder.epoch_of(last) != n:
            self._save_weights(run.model, last, n)
            log.info("rewrote %s with the weights of epoch %d (a kill had left it behind)", last, n)
        have = self.folder.epoch_of(best)
        if best_epoch and have != best_epoch:
            if best_epoch == n:
                self._save_weights(run.model, best, n)
                log.info("rewrote %s with the weights of epoch %d, the best one (a kill had left it behind)", best, n)
            else:
                log.warning("%s holds epoch %s, but the best in metrics.jsonl is epoch %d, whose weights are kept "
                            "nowhere else", best, have, best_epoch)

    def _write_record(self, start_epoch: int) -> None:
        """config.yaml (on resume too, with a comment for every value that changed and when) and
        classes.json, for a run that starts (again) after ``start_epoch`` epochs."""
        if not self.dist.is_main:
            return
        folder = self.folder
        header: list[str] = []
        if self.resume_dir is not None and folder.is_run():
            header = [line for line in folder.config.read_text().splitlines() if line.startswith("#")]
            try:
                old = folder.read_config()  # as written (resume_config has checked it)
            except ValueError:
                old = {}
            new = self.cfg.to_dict()
            header += [f"# resumed after epoch {start_epoch}: {k} changed from {old[k]!r} to {new[k]!r}"
                       for k in new if k in old and old[k] != new[k] and k not in ("output", "name")]
        header += self._history
        folder.write_config("".join(line + "\n" for line in header) + self.cfg.to_yaml())
        names = getattr(self.task, "class_names", None)
        if names and start_epoch == 0:
            folder.write_classes(names)

    def _wrap_ddp(self, run: "_Run") -> None:
        if self.dist.enabled:
            run.ddp_model = nn.parallel.DistributedDataParallel(
                run.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.ddp_find_unused_parameters,
            )

    def _announce(self, run: "_Run") -> None:
        cfg, d = self.cfg, self.dist
        n_params = sum(p.numel() for p in run.model.parameters())
        frozen = sum(p.numel() for p in run.model.parameters() if not p.requires_grad)
        self._say(
            f"training {cfg.model} ({n_params / 1e6:.2f}M params{f', {frozen / 1e6:.2f}M frozen' if frozen else ''}) "
            f"for {cfg.task} on {self.device}"
            f"{f' x{d.world_size} processes' if d.enabled else ''}: {len(run.train_ds)} train / {len(run.val_ds)} "
            f"val images, {cfg.epochs} epochs x {run.steps} steps, global batch {cfg.batch_size * d.world_size}, "
            f"lr {run.lr:.3g}, amp {self.amp and str(self.amp).removeprefix('torch.') or 'off'}"
            f"{f', micro-batches of {self.micro_batch}' if self.micro_batch else ''}; run folder {self.run_dir}"
        )

    def _snapshot(self, run: "_Run", epochs_done: int) -> dict[str, Any]:
        """Everything a resume needs, after ``epochs_done`` epochs (RNG states are added by the caller)."""
        return {
            "best_epoch": int(self._best_record(run.records).get("epoch", 0)),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "ema": run.ema.module.state_dict() if run.ema is not None else None,
            "epoch": epochs_done,
            "best": run.best,
            "updates": run.updates,
        }

    def _epoch(self, run: "_Run", epoch: int) -> None:
        """Train one epoch, check that its weights are finite, evaluate (every process its slice, or rank 0),
        then commit its metrics line, state and weights (Ctrl-C / SIGTERM wait until all are written)."""
        d, task = self.dist, self.task
        self._in_flight = True
        run.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        train_loss, images, skipped = self._train_epoch(run, epoch)
        train_time = time.perf_counter() - t0
        bad = non_finite(run.model) + (non_finite(run.ema.module, "ema.") if run.ema is not None else [])
        if bad:
            what = (f"{len(bad)} weight tensors became non-finite (e.g. {bad[0]}) although the training loss stayed "
                    f"finite ({train_loss:.4g})")
            raise self._diverged(run, epoch, what, self._lr_advice(run))
        train_loss = all_reduce_mean(train_loss, d, self.device)
        metrics = self._evaluate(run)  # the scores on rank 0, {} elsewhere
        skipped += int(metrics.pop(SKIPPED, 0)) + self._listed_unreadable
        self._listed_unreadable = 0  # (counted once, in the first epoch this process trains)
        skipped = sum(gather_objects(skipped, d))
        extra = {SKIPPED: float(skipped)} if skipped else {}
        # RNG states after evaluation (which draws loader seeds): a resumed run continues exactly
        rngs = gather_objects(rng_state(), d)
        if d.is_main:
            record = {
                "epoch": epoch + 1,
                "lr": run.optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in metrics.items()},
                "images_per_s": images * d.world_size / max(train_time, 1e-9),
                "train_time": train_time,
                "time": time.perf_counter() - t0,
                **extra,
            }
            score = metrics[task.best_metric]
            is_best = score > run.best  # (never for a NaN score)
            run.best = score if is_best else run.best
            run.records.append(record)
            with self._signals.hold():
                self._save_epoch(run, rngs, epoch + 1, is_best)
                self._done, self._in_flight = epoch + 1, False
            if self._trackers is not None:
                self._trackers.log(record)
            self._say(self._summary(record, is_best))
        else:
            self._done, self._in_flight = epoch + 1, False
        barrier(d)

    def _evaluate(self, run: "_Run") -> dict[str, float]:
        """The task's scores of the model (and of its EMA, prefixed ``ema_``) on rank 0; {} on the others.
        The unreadable images the model's evaluation left out stay under :data:`SKIPPED` (those of the EMA's
        are the same images)."""
        metrics = self._score(run.model, run.val_loader)
        if run.ema is not None:
            ema = self._score(run.ema.module, run.val_loader)
            ema.pop(SKIPPED, None)
            metrics.update({f"ema_{k}": v for k, v in ema.items()})
        run.model.train()
        return metrics

    def _score(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """Every process scores its slice and rank 0 merges the parts (:attr:`Task.distributed_eval`), or
        rank 0 scores everything. The result on rank 0, {} elsewhere."""
        task, d = self.task, self.dist
        model.eval()
        if task.distributed_eval:
            parts = gather_objects(task.evaluate_part(model, loader, self.device), d)
            return task.merge_parts(parts) if d.is_main else {}
        return task.evaluate(model, loader, self.device) if d.is_main else {}

    def _lr_advice(self, run: "_Run") -> str:
        fp16 = ", or train without --amp fp16" if self.amp == torch.float16 else ""
        return f"start a new run with a lower --lr (this one used {run.lr:.3g}){fp16}"

    def _diverged(self, run: "_Run", epoch: int, what: str, advice: str) -> TrainingDiverged:
        """The error that stops a run whose loss or weights went non-finite in ``epoch`` (0-based)."""
        kept = (f"{self.run_dir} keeps epoch {self._done} as it was ({RunFolder.STATE}, {RunFolder.LAST}, "
                f"{RunFolder.BEST})"
                if self._done else "no epoch had finished")
        return TrainingDiverged(f"training diverged in epoch {epoch + 1}: {what}; nothing of epoch {epoch + 1} was "
                                f"saved and {kept}; {advice}")

    def _loss_diverged(self, run: "_Run", batch: Any, epoch: int, loss: float) -> TrainingDiverged:
        """A non-finite loss, with the advice that fits its cause: non-finite weights (the learning rate),
        non-finite numbers in the batch (the data), or an overflow (the learning rate, fp16)."""
        bad = non_finite(run.model)
        if bad:
            return self._diverged(run, epoch, f"the loss is {loss} and {len(bad)} weight tensors are non-finite (e.g. "
                                              f"{bad[0]})", self._lr_advice(run))
        if not finite_batch(batch):
            return self._diverged(run, epoch, f"the loss is {loss} on a batch that holds non-finite numbers",
                                  "check the data: an image or an annotation (e.g. a box) holds NaN or Inf")
        return self._diverged(run, epoch, f"the loss is {loss} although the weights and the batch are finite",
                              self._lr_advice(run))

    def _train_epoch(self, run: "_Run", epoch: int) -> tuple[float, int, int]:
        """One pass over the training data: ``(mean loss, images trained on, images skipped)``; advances
        ``run.updates``."""
        cfg = self.cfg
        run.ddp_model.train()
        show = self.dist.is_main and not self.quiet and sys.stderr.isatty()
        from tqdm import tqdm

        bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True, unit="batch", total=run.steps)
        loss_sum, n_steps, images, skipped = 0.0, 0, 0, 0
        t0 = time.perf_counter()
        lines = ProgressLines(self._say, f"epoch {epoch + 1}/{cfg.epochs}", run.steps, enabled=not show)
        for batch in bar:
            loss, n, left_out, logs = self._step(run, batch, epoch)
            images, skipped = images + n, skipped + left_out
            if loss is None:  # no image of the batch could be trained on: no step
                continue
            loss_sum += loss
            n_steps += 1
            lines.update(n_steps, images * self.dist.world_size, loss_sum / n_steps)
            if show:
                rate = images / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / n_steps:.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rate * self.dist.world_size:.0f}", **{k: f"{v:.3g}" for k, v in logs.items()})
        bar.close()
        return loss_sum / max(n_steps, 1), images, skipped

    def _step(self, run: "_Run", batch: Any, epoch: int) -> tuple[float | None, int, int, dict[str, float]]:
        """One optimiser step on ``batch`` (in micro-batches whose gradients sum to the batch's): forward
        under autocast, backward, clip, step, schedule, EMA. Returns the batch's loss (None, and no step,
        when no image of it could be trained on), the images trained on and skipped, and the task's logs."""
        task, device = self.task, self.device
        autocast = torch.autocast(device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        parts = (task.split_batch(batch, self.micro_batch) if self.micro_batch else None) or [(batch, 1.0)]
        run.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        images = skipped = 0
        logs: dict[str, float] = {}
        for i, (part, share) in enumerate(parts):
            last = i == len(parts) - 1  # DDP: gradients are all-reduced once, after the last piece
            with (contextlib.nullcontext() if last or not self.dist.enabled else run.ddp_model.no_sync()):
                with autocast:
                    step: StepResult = task.train_step(run.ddp_model, part, device)
                images, skipped, logs = images + step.images, skipped + step.skipped, step.logs or logs
                if step.loss is None:
                    if self.dist.enabled:  # every process must take part in every gradient all-reduce
                        raise ValueError("a training batch of this process held no image that could be read; under "
                                         "torchrun every process must train on every step: remove the unreadable "
                                         "files (train.log names them)")
                    continue
                loss = step.loss
                if not torch.isfinite(loss):
                    raise self._loss_diverged(run, part, epoch, float(loss.detach()))
                run.scaler.scale(loss * share if share != 1.0 else loss).backward()
            step_loss += loss.detach().float() * share
        if images == 0:
            return None, 0, skipped, logs
        if run.clip is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.updates += 1
        run.scheduler.step_update(run.updates)
        if run.ema is not None:
            run.ema.update(run.model, step=run.updates)
        return float(step_loss), images, skipped, logs

    # ------------------------------------------------------------------ files
    def _save_weights(self, model: nn.Module, path: Path, epoch: int) -> None:
        """Own-format weights recording the task's extras, the training config and the ``epoch`` they end."""
        extra = dict(self.task.checkpoint_extra(), train_config=self.cfg.to_dict(), epoch=epoch)
        save_model(model, path, variant=self.cfg.model, extra=extra)

    def _save_epoch(self, run: "_Run", rngs: list[Any], epoch: int, is_best: bool) -> None:
        """Commit ``epoch`` (1-based) in the run folder's order (:meth:`RunFolder.commit_epoch`: metrics,
        state, last and best weights), then draw the curves."""
        self.folder.commit_epoch(run.records,
                                 lambda path: save_state(path, dict(self._snapshot(run, epoch), rng=rngs)),
                                 lambda path: self._save_weights(run.model, path, epoch), is_best)
        try:
            plot_curves(run.records, self.folder.curves, self.task.best_metric,
                        title=f"{self.cfg.model} / {self.cfg.task}")
        except Exception as e:  # a plotting problem never stops training
            log.warning("could not draw learning curves: %s", e)

    def _best_record(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The first epoch with the highest finite ``val_<best_metric>`` (the one best.safetensors holds)."""
        key = f"val_{self.task.best_metric}"
        scored = [r for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return max(scored, key=lambda r: r[key]) if scored else {}

    def _summary(self, r: dict[str, Any], is_best: bool) -> str:
        parts = [f"epoch {r['epoch']}/{self.cfg.epochs}", f"lr {r['lr']:.2e}", f"train_loss {r['train_loss']:.4f}"]
        for k, v in r.items():
            if k.startswith("val_") and k != "val_images":
                parts.append(f"{k} {v:.4f}" if "loss" in k else f"{k} {v:.2f}")
        parts.append(f"{r['images_per_s']:.0f} img/s")
        parts.append(f"{r['time']:.1f}s")
        if r.get("skipped_images"):
            parts.append(f"skipped {int(r['skipped_images'])} unreadable images")
        return "  ".join(parts) + ("  *best*" if is_best else "")


def _remove_run_dir(run_dir: Path) -> None:
    """Remove a run folder that holds nothing worth keeping: renamed aside first (one step: the name is free
    at once and no half-removed folder is left under it), then deleted."""
    aside = run_dir.with_name(f".{run_dir.name}.removed-{os.getpid()}")
    try:
        os.replace(run_dir, aside)
    except OSError:
        aside = run_dir
    shutil.rmtree(aside, ignore_errors=True)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
