"""The training loop shared by every task: one run folder, resumable, on one device or many.

Run folder::

    config.yaml         the resolved TrainConfig (feed it back with --config)
    classes.json        class names (when the task has them)
    metrics.jsonl       one JSON line per epoch: epoch, lr, train_loss, val_*, images_per_s, time
    last.safetensors    weights after the latest epoch (own format: config, classes, input size inside)
    best.safetensors    weights of the epoch with the highest val_<task.best_metric>
    state.pt            resumable state: model, optimiser, scheduler, scaler, EMA, RNG, epoch
    learning_curves.png
    train.log

Every file is written atomically (temporary file + rename), so a kill at any moment leaves the previous
version intact; ``state.pt`` is self-contained, so resuming never mixes two epochs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..checkpoint import save_model
from ..io import atomic_write, remove_temporaries
from .config import TrainConfig
from .curves import plot_curves
from .distributed import DistInfo, all_reduce_mean, barrier, broadcast_object, gather_objects, init_distributed
from .state import load_state, rng_state, save_state, set_rng_state
from .task import Task

__all__ = ["Trainer", "TrainResult", "param_groups", "amp_dtype"]

log = logging.getLogger("pvt.train")


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.safetensors"

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.safetensors"


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
    epochs_saved: int = 0
    best: float = -math.inf
    updates: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay for weights of rank >= 2; none for biases, norms, embeddings/tokens
    and anything the model lists in ``no_weight_decay()``."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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

    def __init__(self, cfg: TrainConfig, task: Task, *, resume: str | Path | None = None, quiet: bool = False):
        self.quiet = quiet
        self.resume_dir = Path(resume) if resume is not None else None
        self._state: dict[str, Any] | None = None
        self.cfg = cfg
        self.dist, self.device = init_distributed(cfg.device)
        self.task = task
        self.amp = amp_dtype(cfg.amp, self.device)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The config of the run in ``run_dir`` with ``overrides`` applied (task, model and data cannot
        change)."""
        run_dir, overrides = Path(run_dir), dict(overrides or {})
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "state.pt").is_file():
            raise ValueError(f"{str(run_dir)!r} is not a resumable run folder (needs config.yaml and state.pt)")
        from .config import load_yaml

        saved = load_yaml(run_dir / "config.yaml")
        for key in ("task", "model", "data"):
            if key in overrides and overrides[key] != saved.get(key):
                raise ValueError(
                    f"cannot resume {str(run_dir)!r} with {key}={overrides[key]!r}: the run was started with "
                    f"{key}={saved.get(key)!r}"
                )
        saved.update(overrides)
        saved["output"], saved["name"] = str(run_dir.parent), run_dir.name
        return TrainConfig.from_dict(saved)

    def _new_run_dir(self) -> Path:
        cfg = self.cfg
        name = cfg.name or f"{cfg.model}-{cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        name = broadcast_object(name, self.dist)
        cfg.name = name  # config.yaml records the folder it describes
        run_dir = Path(cfg.output).expanduser() / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(
                f"run folder {str(run_dir)!r} already exists; choose another --name or continue it with --resume"
            )
        return run_dir

    def _setup_logging(self, run_dir: Path) -> logging.Handler | None:
        if not self.dist.is_main:
            return None
        handler = logging.FileHandler(run_dir / "train.log")
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
        """Run (or continue) the training; returns the run folder, its metrics and its best epoch."""
        cfg, d = self.cfg, self.dist
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + d.rank)
        random.seed(cfg.seed + d.rank)
        np.random.seed((cfg.seed + d.rank) % 2**32)

        # everything that can fail on bad input happens before the run folder exists
        train_ds, val_ds = self.task.build_datasets()
        model = self.task.build_model()
        if self.resume_dir is not None:
            self._state = load_state(self.resume_dir / "state.pt")
            run_dir, created = self.resume_dir, False
            if d.is_main:
                remove_temporaries(run_dir)  # left by a writer that was killed
        else:
            run_dir, created = self._new_run_dir(), True
        self.run_dir = run_dir
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        barrier(d)
        handler = self._setup_logging(run_dir)
        try:
            return self._fit(model, train_ds, val_ds)
        except KeyboardInterrupt:
            raise
        except BaseException:
            if created and d.is_main and not (run_dir / "state.pt").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping
            raise
        finally:
            if handler is not None:
                for name in ("pvt.train", "pvt.data"):
                    logging.getLogger(name).removeHandler(handler)
                handler.close()

    def _fit(self, model: nn.Module, train_ds: Dataset, val_ds: Dataset) -> TrainResult:
        """The run, step by step: loaders, optimisation, resume, the record, DDP, then the epochs."""
        run = _Run(model=model, ddp_model=model, train_ds=train_ds, val_ds=val_ds)
        self._place_model(run)
        self._make_loaders(run)
        self._make_optimisation(run)
        if self._state is not None:
            self._restore(run, self._state)
            if run.start_epoch >= self.cfg.epochs:
                self._say(f"run {self.run_dir} already finished {run.start_epoch} of {self.cfg.epochs} epochs")
                return TrainResult(self.run_dir, run.records, self._best_record(run.records))
            self._say(f"resumed {self.run_dir} at epoch {run.start_epoch + 1}/{self.cfg.epochs}")
        self._write_record()
        self._wrap_ddp(run)
        self._announce(run)
        try:
            for epoch in range(run.start_epoch, self.cfg.epochs):
                self._epoch(run, epoch)
        except KeyboardInterrupt:
            self._save_interrupted(run)
            raise
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
        """Every process reads its share of each epoch (shuffled, the last partial batch dropped); rank 0
        alone evaluates."""
        cfg, d = self.cfg, self.dist
        run.sampler = DistributedSampler(run.train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                         seed=cfg.seed, drop_last=True)
        kw: dict[str, Any] = dict(num_workers=cfg.workers, collate_fn=self.task.collate_fn,
                                  pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0)
        run.train_loader = DataLoader(run.train_ds, batch_size=cfg.batch_size, sampler=run.sampler, drop_last=True,
                                      **kw)
        run.steps = len(run.train_loader)
        if run.steps == 0:
            per = len(run.train_ds) // d.world_size
            raise ValueError(f"config value batch_size={cfg.batch_size}: larger than the {per} training images per "
                             f"process; accepted: 1..{max(1, per)}")
        if d.is_main:
            run.val_loader = DataLoader(run.val_ds, batch_size=cfg.batch_size, shuffle=False, **kw)

    def _make_optimisation(self, run: "_Run") -> None:
        """AdamW on the parameter groups, the task's schedule (else warm-up + cosine per step), the fp16
        gradient scaler, EMA, clipping and micro-batches."""
        from timm.scheduler import CosineLRScheduler
        from timm.utils import ModelEmaV3

        cfg, task, steps = self.cfg, self.task, run.steps
        run.lr = cfg.peak_lr(self.dist.world_size)
        run.optimizer = torch.optim.AdamW(param_groups(run.model, cfg.weight_decay), lr=run.lr, eps=cfg.opt_eps)
        run.scheduler = task.build_scheduler(run.optimizer, steps)
        if run.scheduler is None:
            warmup = min(int(round(cfg.warmup_epochs * steps)), cfg.epochs * steps - 1)
            run.scheduler = CosineLRScheduler(
                run.optimizer, t_initial=max(1, cfg.epochs * steps - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
                warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False,
            )
        run.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        run.ema = ModelEmaV3(run.model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        run.clip = (cfg.clip_grad if cfg.clip_grad is not None else task.default_clip_grad()) or None
        self.micro_batch = cfg.micro_batch or task.auto_micro_batch(run.model, self.device)

    def _restore(self, run: "_Run", st: dict[str, Any]) -> None:
        """Continue from a saved state: weights, optimiser, schedule (stretched to a longer ``epochs``),
        scaler, EMA, counters, this process's random state and the metrics of the saved epochs."""
        from timm.scheduler import CosineLRScheduler

        try:
            run.model.load_state_dict(st["model"])
        except RuntimeError as e:
            raise ValueError(
                f"cannot resume {str(self.run_dir)!r}: its saved model does not fit the one built from the current "
                f"config and data (did the classes change?): {str(e).strip().splitlines()[-1].strip()}"
            ) from None
        run.optimizer.load_state_dict(st["optimizer"])
        run.scheduler.load_state_dict(st["scheduler"])
        if isinstance(run.scheduler, CosineLRScheduler):
            run.scheduler.t_initial = max(1, self.cfg.epochs * run.steps - run.scheduler.warmup_t)
        run.scaler.load_state_dict(st["scaler"])
        if run.ema is not None and st.get("ema") is not None:
            run.ema.module.load_state_dict(st["ema"])
        run.start_epoch, run.best, run.updates = int(st["epoch"]), float(st["best"]), int(st["updates"])
        if len(st["rng"]) == self.dist.world_size:
            set_rng_state(st["rng"][self.dist.rank])
        run.records = self._read_records(self.run_dir, run.start_epoch)

    def _write_record(self) -> None:
        """config.yaml (on resume too: a longer ``epochs`` is part of the run now) and classes.json."""
        if not self.dist.is_main:
            return
        with atomic_write(self.run_dir / "config.yaml", "w") as f:
            f.write(self.cfg.to_yaml())
        names = getattr(self.task, "class_names", None)
        if names and self._state is None:
            with atomic_write(self.run_dir / "classes.json", "w") as f:
                json.dump(names, f, indent=1)

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
        """Train one epoch, evaluate on rank 0, then save its metrics line, state and weights."""
        d, task = self.dist, self.task
        run.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        train_loss, images = self._train_epoch(run, epoch)
        train_time = time.perf_counter() - t0
        train_loss = all_reduce_mean(train_loss, d, self.device)
        extra = task.end_epoch()
        metrics: dict[str, float] = {}
        if d.is_main:
            metrics = self._evaluate(run)
            for k, v in task.end_epoch().items():  # evaluation's own counts add to training's
                extra[k] = extra.get(k, 0.0) + v
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
            is_best = score > run.best
            run.best = max(run.best, score)
            run.records.append(record)
            run.epochs_saved = epoch + 1
            self._save_epoch(run.model, self._snapshot(run, epoch + 1), rngs, record, run.records, is_best)
            self._say(self._summary(record, is_best))
        barrier(d)

    def _evaluate(self, run: "_Run") -> dict[str, float]:
        """The task's scores of the model (and of its EMA, prefixed ``ema_``)."""
        run.model.eval()
        metrics = self.task.evaluate(run.model, run.val_loader, self.device)
        if run.ema is not None:
            run.ema.module.eval()
            metrics.update({f"ema_{k}": v for k, v in self.task.evaluate(run.ema.module, run.val_loader,
                                                                          self.device).items()})
        run.model.train()
        return metrics

    def _save_interrupted(self, run: "_Run") -> None:
        """Ctrl-C: save the state of the last finished epoch's count (an epoch in flight is repeated on resume)."""
        if not self.dist.is_main:
            return
        st = self._snapshot(run, max(run.epochs_saved, run.start_epoch))
        st["rng"] = [rng_state()]
        save_state(self.run_dir / "state.pt", st)
        self._save_weights(run.model, self.run_dir / "last.safetensors")
        print(f"\ninterrupted: saved {self.run_dir / 'state.pt'}; continue with: pvt train --resume {self.run_dir}",
              file=sys.stderr, flush=True)

    def _train_epoch(self, run: "_Run", epoch: int) -> tuple[float, int]:
        """One pass over the training data: ``(mean loss, images trained on)``; advances ``run.updates``."""
        cfg, device, task = self.cfg, self.device, self.task
        run.ddp_model.train()
        show = self.dist.is_main and not self.quiet and sys.stderr.isatty()
        from tqdm import tqdm

        bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True, unit="batch")
        loss_sum, n_steps, images = 0.0, 0, 0
        t0 = time.perf_counter()
        for batch in bar:
            n = task.batch_size_of(batch)
            if n == 0 and not self.dist.enabled:  # (under DDP every process must step together)
                continue
            loss, logs = self._step(run, batch, epoch)
            loss_sum += loss
            n_steps += 1
            images += n
            if show:
                rate = images / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / n_steps:.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rate * self.dist.world_size:.0f}", **{k: f"{v:.3g}" for k, v in logs.items()})
        bar.close()
        return loss_sum / max(n_steps, 1), images

    def _step(self, run: "_Run", batch: Any, epoch: int) -> tuple[float, dict[str, float]]:
        """One optimiser step on ``batch`` (in micro-batches whose gradients sum to the batch's): forward
        under autocast, backward, clip, step, schedule, EMA. Returns the batch's loss and the task's logs."""
        task, device = self.task, self.device
        autocast = torch.autocast(device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        parts = (task.split_batch(batch, self.micro_batch) if self.micro_batch else None) or [(batch, 1.0)]
        run.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        logs: dict[str, float] = {}
        for i, (part, share) in enumerate(parts):
            last = i == len(parts) - 1  # DDP: gradients are all-reduced once, after the last piece
            with (contextlib.nullcontext() if last or not self.dist.enabled else run.ddp_model.no_sync()):
                with autocast:
                    loss, logs = task.train_step(run.ddp_model, part, device)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {float(loss)} at epoch {epoch + 1}; lower --lr or disable amp")
                run.scaler.scale(loss * share if share != 1.0 else loss).backward()
            step_loss += loss.detach().float() * share
        if run.clip is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.updates += 1
        run.scheduler.step_update(run.updates)
        if run.ema is not None:
            run.ema.update(run.model, step=run.updates)
        return float(step_loss), logs

    # ------------------------------------------------------------------ files
    def _save_weights(self, model: nn.Module, path: Path) -> None:
        extra = dict(self.task.checkpoint_extra(), train_config=self.cfg.to_dict())
        save_model(model, path, variant=self.cfg.model, extra=extra)

    def _save_epoch(self, model, state, rngs, record, records, is_best) -> None:
        run_dir = self.run_dir
        # metrics first: on resume, lines past the saved epoch are dropped
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        save_state(run_dir / "state.pt", dict(state, rng=rngs))
        self._save_weights(model, run_dir / "last.safetensors")
        if is_best:
            self._save_weights(model, run_dir / "best.safetensors")
        try:
            plot_curves(records, run_dir / "learning_curves.png", self.task.best_metric,
                        title=f"{self.cfg.model} / {self.cfg.task}")
        except Exception as e:  # a plotting problem never stops training
            log.warning("could not draw learning curves: %s", e)

    @staticmethod
    def _read_records(run_dir: Path, upto: int) -> list[dict[str, Any]]:
        """metrics.jsonl lines for epochs <= ``upto``; later (unsaved) lines are removed from the file."""
        path = run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        keep = []
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if r.get("epoch", 0) <= upto:
                keep.append(r)
        with atomic_write(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in keep))
        return keep

    def _best_record(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        key = f"val_{self.task.best_metric}"
        scored = [r for r in records if key in r]
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
