"""``TrainConfig``: every knob of a training run, with the paper's recipe as defaults.

Values are resolved in layers, later ones winning (:func:`resolve_layers`; :func:`pvt.tasks.resolve_config`
supplies the task's layer)::

    dataclass defaults (DeiT's recipe, as the official PVT code)
    < the task's defaults for the model and data (``Task.config_defaults``: e.g. detection lr 1e-4,
      12 epochs; the built-in digits 32x32, no flips)
    < a YAML file (``--config run.yaml``)
    < command-line flags / keyword arguments (``--lr 1e-3`` / ``pvt.train(lr=1e-3)``)

The resolved config is written beside the run as ``config.yaml`` and can be fed back with ``--config``.
Every value is type- and range-checked; a bad one raises one ValueError naming the key, the value and
what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..base.constants import (EVAL_CROP_PCT, EVAL_INTERPOLATION, INTERPOLATIONS, MAX_BATCH, MAX_IMG_SIZE, MAX_THREADS,
                              MAX_WORKERS)
from ..base.io import YAML_LIMITS, safe_yaml

__all__ = ["TrainConfig", "resolve_layers", "load_yaml", "parse_value"]


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       choices: tuple[str, ...] | None = None, factory: Any = None) -> Any:
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """One training run. ``None`` means "derived" where a field's help says so."""

    # what
    task: str = _f("classification", "task to train (see pvt.tasks.list_tasks())")
    model: str = _f("pvt_v2_b0", "model variant (pvt models)")
    data: str | None = _f(None, "dataset folder with train/ and val/ (classification also: a shard folder written "
                          "by pvt make-shards; None: the task's built-in data)")
    data_dir: str | None = _f(None, "cache folder for built-in data (default ~/.cache/pvt)")
    pretrained: str | None = _f(None, "weights to start from (any format create_model loads); new head")
    output: str = _f("runs", "parent folder of run folders")
    name: str | None = _f(None, "run folder name, inside output (default: <model>-<task>-<timestamp>)")
    # schedule
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
    # regularisation and augmentation
    drop_path: float | None = _f(None, "stochastic depth (None: the variant's official rate)", min=0.0, max=1.0)
    drop: float = _f(0.0, "dropout before the head", min=0.0, max=1.0)
    smoothing: float = _f(0.1, "label smoothing", min=0.0, max=1.0)
    mixup: float = _f(0.8, "mixup alpha (0: off)", min=0.0, max=100.0)
    cutmix: float = _f(1.0, "cutmix alpha (0: off)", min=0.0, max=100.0)
    mixup_prob: float = _f(1.0, "probability of mixup or cutmix per batch", min=0.0, max=1.0)
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup", min=0.0, max=1.0)
    aa: str = _f("rand-m9-mstd0.5-inc1", "timm auto-augment policy ('none': off)")
    color_jitter: float = _f(0.4, "colour jitter (used when aa is 'none')", min=0.0)
    reprob: float = _f(0.25, "random-erasing probability", min=0.0, max=1.0)
    remode: str = _f("pixel", "random-erasing fill", choices=("pixel", "rand", "const"))
    recount: int = _f(1, "random-erasing count", min=1)
    hflip: float = _f(0.5, "horizontal-flip probability", min=0.0, max=1.0)
    scale: list[float] = _f(None, "random-resized-crop area range", factory=lambda: [0.08, 1.0])
    ratio: list[float] = _f(None, "random-resized-crop aspect-ratio range", factory=lambda: [0.75, 4 / 3])
    interpolation: str = _f(EVAL_INTERPOLATION, "resize interpolation", choices=INTERPOLATIONS)
    img_size: int = _f(224, "training and evaluation crop size", min=16, max=MAX_IMG_SIZE)
    crop_pct: float = _f(EVAL_CROP_PCT, "evaluation: centre crop / resize ratio (224/256)", min=0.1, max=1.0)
    repeated_aug: bool = _f(True, "repeated augmentation (the official sampler): each image 3 times per epoch in "
                            "different augmentations, spread over the processes, the epoch cut to the data's "
                            "length")
    device_augment: bool = _f(False, "decode JPEGs and run the training augmentation in batches on the training "
                              "device (nvJPEG and tensor ops on a GPU); loader workers only read files")
    model_ema: bool = _f(False, "keep an exponential moving average of the weights")
    model_ema_decay: float = _f(0.99996, "EMA decay per step", min=0.0, max=1.0)
    # the backbone (any task)
    grad_checkpointing: bool = _f(False, "recompute each backbone block in the backward pass: far less activation "
                                  "memory, the same gradients, for a second forward pass of the blocks")
    frozen_stages: int = _f(-1, "freeze the backbone's first patch embedding (0) or first N stages (no gradients, "
                            "eval mode), as mmdetection; -1: none", min=-1, max=4)
    norm_eval: bool = _f(False, "keep the backbone's BatchNorm layers in eval mode while training, as mmdetection "
                         "(PVT's own norms are LayerNorms, which this leaves alone)")
    freeze_backbone: bool = _f(False, "train only what is not the backbone (classification: linear probing of the "
                               "head); the backbone frozen, in eval mode")
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
    task_options: dict[str, Any] = _f(None, "task-specific options (--opt KEY=VALUE)", factory=dict)

    # -- derived -----------------------------------------------------------------------------
    def peak_lr(self, world_size: int = 1) -> float:
        """``lr`` if set, else the official linear rule ``base_lr * batch_size * world_size / 512``."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size * world_size / 512.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a (possibly partial) mapping, checking every key, type and range."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            from ..base.naming import close_matches

            hints = []
            for k in unknown:
                close = close_matches(k, cls.field_names(), n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown config key {', '.join(hints)}; accepted: {', '.join(cls.field_names())}")
        values = {}
        hints_ = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = _check(f, hints_[f.name], data[f.name])
        cfg = cls(**values)
        return cfg


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
        if f.name == "scale" and (len(out) != 2 or not 0 < out[0] <= out[1] <= 1):
            raise bad("two numbers 0 < lo <= hi <= 1, e.g. 0.08,1.0")
        if f.name == "ratio" and (len(out) != 2 or not 0 < out[0] <= out[1]):
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
    """A YAML mapping of TrainConfig keys (dashes accepted for underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if path.stat().st_size > YAML_LIMITS["bytes"]:
        raise ValueError(f"config file {str(path)!r} is {path.stat().st_size} bytes, more than the "
                         f"{YAML_LIMITS['bytes']} a config may have")
    try:
        data = safe_yaml(path.read_text(), f"config file {str(path)!r}") or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_layers(yaml_path: str | Path | None = None, *,
                   task_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   **overrides: Any) -> TrainConfig:
    """Apply the layers described in the module docstring and validate the result.

    ``overrides`` are TrainConfig keys (values may be strings from the command line);
    ``task_defaults(user_values)`` gives the task's layer.
    """
    user: dict[str, Any] = {}
    if yaml_path is not None:
        user.update(load_yaml(yaml_path))
    user.update({k: v for k, v in overrides.items()})
    # type-check the user's values first so errors name what they typed
    checked = TrainConfig.from_dict(user).to_dict()
    user = {k: checked[k] for k in user}
    layered: dict[str, Any] = dict(task_defaults(user)) if task_defaults is not None else {}
    layered.update(user)
    cfg = TrainConfig.from_dict(layered)
    _check_cross(cfg)
    return cfg


def _check_cross(cfg: TrainConfig) -> None:
    name = cfg.name
    if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name or name != name.strip()):
        raise ValueError(f"config value name={name!r}: expected a folder name (no / or \\, not . or ..): the run "
                         "folder is made inside output")
    if name is not None and any(not c.isprintable() for c in name):
        raise ValueError(f"config value name={name!r}: expected printable characters (no newline, tab or other "
                         "control character: the name is printed in every message and log line)")
    if cfg.min_lr > cfg.peak_lr() and cfg.lr is not None:
        raise ValueError(f"config value min_lr={cfg.min_lr!r}: expected <= lr ({cfg.lr!r})")
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ValueError(f"config value device={dev!r}: expected one of auto, cpu, cuda, cuda:N, mps")
