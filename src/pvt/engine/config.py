"""``TrainConfig``: the engine's knobs of a training run, with the task's own typed config inside it.

The engine's fields are what every task shares: what to train and where (task, model, data, output, name),
the schedule and optimiser (epochs, batch, learning rates, AdamW, clipping, EMA), and how (device, AMP,
loader workers, threads, seed, trackers). What one task alone reads (classification's augmentation, mixup,
label smoothing, crops; the dense tasks' options) is a :class:`TaskConfig` subclass that the task declares
(:attr:`pvt.engine.task.TrainingTask.config_class`), held in :attr:`TrainConfig.task_config`.

Written out (``config.yaml``, checkpoint metadata) the two are one flat mapping, each key routed back to
the config that declares it (:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`). Values are
resolved by :func:`pvt.tasks.resolve_config`: the task's named preset < a YAML file (``--config run.yaml``)
< command-line flags / keyword arguments. Every value is type- and range-checked by its field's metadata
(:func:`_f`, the same for the engine's and every task's fields); a bad one raises one ValueError naming the
key, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..base.constants import MAX_BATCH, MAX_THREADS, MAX_WORKERS
from ..base.io import read_yaml, safe_yaml

__all__ = ["TrainConfig", "TaskConfig", "RECIPE_KEYS", "config_fields", "load_yaml", "parse_value"]


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       choices: tuple[str, ...] | None = None, factory: Any = None, pair: str | None = None) -> Any:
    """A config field: its default, its ``--help`` text and the bounds :func:`_check` holds a value to
    (``pair``: a list of two numbers, ``"unit"`` 0 < lo <= hi <= 1 or ``"positive"`` 0 < lo <= hi)."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "pair": pair}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The flat fields of a config dataclass: the keys it contributes to ``config.yaml``."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("nested")]


def _checked(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The values of ``data`` that ``cls`` declares, each converted and checked against its field."""
    hints = typing.get_type_hints(cls)
    return {f.name: _check(f, hints[f.name], data[f.name]) for f in config_fields(cls) if f.name in data}


@dataclass
class TaskConfig:
    """The values only a task reads; each task declares a subclass (see :mod:`pvt.tasks.configs`)."""

    task_options: dict[str, Any] = _f(None, "task-specific options (--opt KEY=VALUE)", factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in config_fields(cls)]


RECIPE_KEYS = ("epochs", "batch_size", "lr", "base_lr", "min_lr", "warmup_lr", "warmup_epochs", "weight_decay",
               "opt_eps", "clip_grad", "model_ema", "model_ema_decay")
"""The engine's values that make a recipe: every task preset names each of them."""


@dataclass
class TrainConfig:
    """One training run: the engine's knobs and the task's config. ``None`` means "derived" where a field's
    help says so."""

    # what
    task: str = _f("classification", "task to train (see pvt.tasks.list_tasks())")
    model: str = _f("pvt_v2_b0", "model variant (pvt models)")
    data: str | None = _f(None, "dataset folder with train/ and val/ (classification also: a shard folder written "
                          "by pvt make-shards; None: the task's built-in data)")
    data_dir: str | None = _f(None, "cache folder for built-in data (default ~/.cache/pvt)")
    pretrained: str | None = _f(None, "weights to start from (any format create_model loads); new head")
    output: str = _f("runs", "parent folder of run folders")
    name: str | None = _f(None, "run folder name, inside output (default: <model>-<task>-<timestamp>)")
    # schedule and optimiser
    epochs: int = _f(300, "training epochs", min=1, max=100_000)
    batch_size: int = _f(128, "images per process per step", min=1, max=MAX_BATCH)
    micro_batch: int = _f(0, "images per forward/backward pass, gradients summed over the batch (tasks that "
                          "allow it: classification); 0: auto (on CPU, pieces whose stage-1 activations stay "
                          "under 32 MiB, so a step touches no new memory pages; whole batches on GPU)", min=0, max=MAX_BATCH)
    lr: float | None = _f(None, "peak learning rate (None: base_lr * global batch / 512)", min=0.0, max=10.0)
    base_lr: float = _f(5e-4, "learning rate per 512 images of global batch", min=0.0, max=10.0)
    min_lr: float = _f(1e-5, "learning rate at the end of the cosine", min=0.0, max=10.0)
    warmup_lr: float = _f(1e-6, "learning rate at the start of warm-up", min=0.0, max=10.0)
    warmup_epochs: float = _f(5.0, "linear warm-up length in epochs", min=0.0, max=100_000)
    weight_decay: float = _f(0.05, "AdamW weight decay (not on norms, biases, embeddings)", min=0.0)
    opt_eps: float = _f(1e-8, "AdamW epsilon", min=0.0)
    clip_grad: float | None = _f(None, "gradient-norm clip (None: the task's default, for classification the "
                                 "variant's official value; 0: off)", min=0.0)
    model_ema: bool = _f(False, "keep an exponential moving average of the weights")
    model_ema_decay: float = _f(0.99996, "EMA decay per step", min=0.0, max=1.0)
    # how
    device: str = _f("auto", "device: auto, cpu, cuda, cuda:N, mps")
    amp: str = _f("auto", "mixed precision (auto: bf16 on CUDA, off on CPU)", choices=("auto", "none", "bf16", "fp16"))
    channels_last: bool = _f(False, "channels-last memory format")
    workers: int = _f(2, "data-loading processes per training process", min=0, max=MAX_WORKERS)
    shuffle: bool = _f(True, "shuffle the training data every epoch (off: the stored order, e.g. to compare "
                       "folder and shard runs)")
    shuffle_buffer: int = _f(1000, "shard data: encoded images each loader worker shuffles among, on top of the "
                             "shard order (0: shard order only)", min=0)
    threads: int = _f(0, "CPU threads for torch ops (0: the cores this process may use, as torch or the pvt "
                         "command sizes them)", min=0, max=MAX_THREADS)
    seed: int = _f(0, "random seed", min=0, max=2**32 - 1)
    log: str = _f("tensorboard", "experiment trackers, comma-separated: tensorboard (event files in the run folder, "
                  "when installed), mlflow, wandb (offline, a store in the run folder); none: off")
    # what only the task reads (its own dataclass, written out flat beside the engine's keys)
    task_config: TaskConfig = field(default_factory=TaskConfig, metadata={"nested": True})

    # -- derived -----------------------------------------------------------------------------
    def peak_lr(self, world_size: int = 1) -> float:
        """``lr`` if set, else the official linear rule ``base_lr * batch_size * world_size / 512``."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size * world_size / 512.0

    def to_dict(self) -> dict[str, Any]:
        """The engine's values, then the task's: one flat mapping, as ``config.yaml`` holds it."""
        engine = {f.name: getattr(self, f.name) for f in config_fields(type(self))}
        return {**engine, **self.task_config.to_dict()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def field_names(cls) -> list[str]:
        """The engine's keys (the task's: ``task_config.field_names()``)."""
        return [f.name for f in config_fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], task_config: type[TaskConfig] = TaskConfig, *,
                  former: Collection[str] = ()) -> "TrainConfig":
        """Build from a (possibly partial) flat mapping, each key going to the engine's field or to
        ``task_config``'s, every key, type and range checked. Keys in ``former`` that neither declares are
        left out (config files of older versions held every task's keys)."""
        known = cls.field_names() + task_config.field_names()
        unknown = sorted(set(data) - set(known) - set(former))
        if unknown:
            from ..base.naming import close_matches

            hints = []
            for k in unknown:
                close = close_matches(k, known, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown config key {', '.join(hints)}; accepted (task "
                             f"{data.get('task', 'classification')}): {', '.join(known)}")
        return cls(**_checked(cls, data), task_config=task_config(**_checked(task_config, data)))

    def validate(self) -> None:
        """The checks between values: a folder name, ``min_lr <= lr``, a device string."""
        name = self.name
        if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name or name != name.strip()):
            raise ValueError(f"config value name={name!r}: expected a folder name (no / or \\, not . or ..): the run "
                             "folder is made inside output")
        if name is not None and any(not c.isprintable() for c in name):
            raise ValueError(f"config value name={name!r}: expected printable characters (no newline, tab or other "
                             "control character: the name is printed in every message and log line)")
        if self.min_lr > self.peak_lr() and self.lr is not None:
            raise ValueError(f"config value min_lr={self.min_lr!r}: expected <= lr ({self.lr!r})")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"config value device={dev!r}: expected one of auto, cpu, cuda, cuda:N, mps")


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(args[0])}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}.get(
        typing.get_origin(tp) or tp, str(tp)
    )


def _check(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """``value`` converted to the field's type and range-checked, or ValueError."""
    meta = f.metadata
    origin = typing.get_origin(tp)
    optional = origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if optional else tp

    def bad(what: str) -> ValueError:
        return ValueError(f"config value {f.name}={value!r}: expected {what}")

    if value is None:
        if optional:
            return None
        raise bad(_type_name(tp))
    if isinstance(value, str) and base is not str:
        value = parse_value(value)
        if value is None and optional:
            return None
    base_origin = typing.get_origin(base) or base
    if base_origin is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        out: Any = value
    elif base_origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad(_type_name(tp))
        out = int(value)
    elif base_origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(_type_name(tp))
        try:
            out = float(value)
        except OverflowError:  # an integer beyond any float
            out = math.inf
        if not math.isfinite(out):
            raise bad("a finite number")
    elif base_origin is str:
        out = str(value)
    elif base_origin is list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            raise bad("a list of finite numbers, e.g. 0.08,1.0")
        out = [float(v) for v in value]
        pair = meta.get("pair")  # a range of two numbers: "unit" (0 < lo <= hi <= 1) or "positive" (0 < lo <= hi)
        if pair == "unit" and (len(out) != 2 or not 0 < out[0] <= out[1] <= 1):
            raise bad("two numbers 0 < lo <= hi <= 1, e.g. 0.08,1.0")
        if pair == "positive" and (len(out) != 2 or not 0 < out[0] <= out[1]):
            raise bad("two numbers 0 < lo <= hi, e.g. 0.75,1.333")
    elif base_origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping of task options")
        out = dict(value)
    else:  # pragma: no cover
        out = value
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        g = lambda v: str(v) if isinstance(v, int) else f"{v:g}"  # noqa: E731  (2**32 - 1, not 4.29497e+09)
        if lo is not None and out < lo:
            raise bad(f"{_type_name(base)} >= {g(lo)}" + (f" and <= {g(hi)}" if hi is not None else ""))
        if hi is not None and out > hi:
            raise bad(f"{_type_name(base)} <= {g(hi)}" + (f" and >= {g(lo)}" if lo is not None else ""))
    if choices and out not in choices:
        raise bad(f"one of {', '.join(choices)}")
    return out


def parse_value(text: str) -> Any:
    """A command-line string as YAML scalar/list: ``"1e-3"`` -> 1e-3, ``"none"``/``"null"`` -> None,
    ``"0.08,1.0"`` -> [0.08, 1.0], ``"true"`` -> True; anything else stays a string."""
    if text.strip().lower() in ("none", "null", "~", ""):
        return None
    if "," in text and not text.strip().startswith(("[", "{")):
        return [parse_value(t) for t in text.split(",")]
    try:
        value = safe_yaml(text, "command-line value")
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of TrainConfig keys (dashes accepted for underscores), read by :func:`pvt.base.io.read_yaml`."""
    return {str(k).replace("-", "_"): v for k, v in read_yaml(path).items()}
