"""The training tasks: what is specific to classification, detection, instance segmentation and
semantic segmentation (data, model, loss, score, prediction), as plug-ins of :mod:`pvt.engine`.

The registry is this one explicit table; a task module is imported only when its task is asked for,
so a classification run never loads COCO, ADE20K or the dense metrics (and importing this package, or
:mod:`.configs` for ``pvt train --help``, loads no torch).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.naming import unknown_name
from ..engine.config import TrainConfig, load_yaml
from ..models.variants import VARIANTS
from .configs import TASK_CONFIGS

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..engine.task import InferenceTask, Task

__all__ = ["TASKS", "list_tasks", "get_task", "create_task", "resolve_config", "read_config", "Trained",
           "load_trained", "calibration_batch"]

TASKS: dict[str, str] = {
    "classification": "pvt.tasks.classification:ClassificationTask",
    "detection": "pvt.tasks.detection:DetectionTask",
    "instance": "pvt.tasks.detection:InstanceTask",
    "segmentation": "pvt.tasks.segmentation:SegmentationTask",
    "depth": "pvt.tasks.depth:DepthTask",
}
"""Task name -> ``module:class`` of its :class:`~pvt.engine.task.Task`."""

FORMER_KEYS = frozenset(k for c in TASK_CONFIGS for k in c.field_names())
"""Every task's keys: a config file written before the configs were split per task holds all of them, so a
recorded config (a run's config.yaml, a checkpoint's) may name another task's keys, which are left out."""


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


def read_config(data: dict[str, Any], *, recorded: bool = False) -> TrainConfig:
    """A flat mapping (``config.yaml``, keyword arguments) as a checked :class:`TrainConfig` whose
    ``task_config`` is its task's; ``recorded``: the mapping was written by pvt (another task's keys, which
    older versions wrote, are left out)."""
    cls = get_task(str(data.get("task", "classification")))
    if not recorded:
        other = sorted((set(data) & FORMER_KEYS) - set(cls.config_class.field_names()))
        if other:
            raise ValueError(f"config key {other[0]!r} is another task's: the {cls.name} task does not take it; "
                             f"accepted: {', '.join(TrainConfig.field_names() + cls.config_class.field_names())}")
    return TrainConfig.from_dict(data, cls.config_class, former=FORMER_KEYS if recorded else ())


def resolve_config(yaml_path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A checked :class:`TrainConfig`: the task's preset for the model and data < a YAML file (which may be
    an older run's config.yaml) < ``overrides`` (flags / keyword arguments), validated by its task (model
    name, task options). Without a ``task``, a dense model's name (``atss_pvt_v2_b2``) selects the task
    that trains it; anything else is classification."""
    from_yaml = load_yaml(yaml_path) if yaml_path is not None else {}
    user = {**from_yaml, **overrides}
    if "task" not in user and user.get("model") is not None and user["model"] not in VARIANTS:
        from ..dense import get_dense_spec

        with contextlib.suppress(ValueError):  # a dense model's name implies its task
            user["task"] = get_dense_spec(user["model"]).task
    user.setdefault("task", "classification")
    task = get_task(user["task"])
    # an older run's config.yaml names every task's keys: another task's are left out (a flag's are refused)
    foreign = {k for k in from_yaml if k in FORMER_KEYS and k not in overrides} - set(task.config_class.field_names())
    user = {k: v for k, v in user.items() if k not in foreign}
    checked = read_config(user).to_dict()  # the user's values checked first, so errors name what they typed
    cfg = read_config({**task.recipe({k: checked[k] for k in user}), **{k: checked[k] for k in user}})
    cfg.validate()
    create_task(cfg)
    return cfg


@dataclass
class Trained:
    """A model trained by ``pvt train``, loaded from its checkpoint, with the task that knows how to use it."""

    task: InferenceTask
    model: nn.Module
    """In eval mode, on :attr:`device`."""
    meta: dict[str, Any]
    """The checkpoint's metadata (config, class names, training config, ...)."""
    path: Path
    """The weights file that was read."""
    device: torch.device
    precision: str = "float32"
    """The inference precision the model runs in (:func:`pvt.accel.set_precision`)."""
    precision_reason: str = "default"
    """Why: ``requested``, ``default``, or what ``auto`` saw in the CPU."""

    def autocast(self):
        """The context to run :attr:`model` in (CUDA autocast for bfloat16 on a GPU, else nothing)."""
        from ..accel import inference_autocast

        return inference_autocast(self.device, self.precision)

    @property
    def name(self) -> str:
        """The model's name: the variant (classification) or the backbone (dense tasks)."""
        return str(self.meta.get("variant") or self.task.cfg.model)


def load_trained(checkpoint: str | Path, *, device: str = "auto", data: str | None = None,
                 model: str | None = None, precision: str = "float32", calibration: str | Path | None = None,
                 calibration_images: int = 64) -> Trained:
    """The model of a ``pvt train`` checkpoint (a ``.safetensors`` file, or a run folder: its best, else
    last), for any task. ``data`` replaces the data it was trained on (for evaluation); ``model``, when
    given, must be the variant it holds. ``precision``: float32, bfloat16, int8 or auto
    (:func:`pvt.accel.set_precision`); ``calibration``: a folder of images (searched recursively, up
    to ``calibration_images`` of them, prepared as the task's evaluation input) for static int8 ranges."""
    from ..accel import set_precision
    from ..engine.distributed import resolve_device
    from ..weights.checkpoint import read_own_format
    from ..weights.run_folder import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    own = read_own_format(path)
    meta = own[1] if own is not None else {}
    if own is None or not isinstance(meta.get("task"), str) or meta["task"] not in TASKS \
            or not isinstance(meta.get("train_config"), dict):
        raise ValueError(
            f"checkpoint {str(path)!r} is not a model written by pvt train (expected a .safetensors file with "
            f"format=pvt metadata naming its task, one of {', '.join(sorted(TASKS))}, and its training config)"
        )
    try:
        task = get_task(meta["task"]).from_checkpoint(meta, **({"data": data} if data is not None else {}))
    except ValueError as e:
        raise ValueError(f"checkpoint {str(path)!r}: {e}") from None
    found = str(meta.get("variant") or task.cfg.model)
    if model is not None and model != found:
        raise ValueError(f"checkpoint {str(path)!r} holds {found!r}, not the requested model {model!r}")
    net = task.load_model(own[0], meta, path)
    bad = [k for k, t in net.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise ValueError(f"checkpoint {str(path)!r} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): it "
                         "was saved from a diverged run and would predict NaN; use an earlier checkpoint")
    dev = resolve_device(device)
    net.to(dev).eval()
    images = None
    if calibration is not None:
        transform = getattr(task, "input_transform", None)
        if transform is None:
            raise ValueError(f"int8 calibration from images is for classification; the {task.name} task runs "
                             "int8 with dynamic ranges (leave out the calibration folder)")
        images = calibration_batch(calibration, transform(), calibration_images)
    picked, reason = set_precision(net, precision, device=dev, calibration=images)
    if precision == "float32":
        reason = "default"
    return Trained(task, net, meta, path, dev, picked, reason)


def calibration_batch(folder: str | Path, transform: Any, limit: int = 64) -> torch.Tensor:
    """Up to ``limit`` images from ``folder`` (recursively; evenly spread over the sorted file list, so
    that every class folder is represented), each through ``transform`` (image -> tensor): ``(N, C, H, W)``.
    Files that cannot be decoded (truncated, a decompression bomb) are skipped with a warning that counts
    them; a ValueError when none can."""
    import torch

    from ..data import IMG_EXTENSIONS, load_rgb

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"calibration folder {str(root)!r} does not exist")
    if limit < 1:
        raise ValueError(f"calibration image count must be >= 1, got {limit}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"calibration folder {str(root)!r} has no images ({', '.join(sorted(IMG_EXTENSIONS))})")
    step = max(1, len(files) // limit)
    images, unreadable = [], []
    for p in files[::step][:limit]:
        try:
            images.append(transform(load_rgb(p)))
        except Exception as e:  # noqa: BLE001  (PIL's errors have no common base; a bomb, MemoryError)
            unreadable.append(f"{p} ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    if unreadable:
        logging.getLogger("pvt").warning("calibration: skipped %d unreadable image(s) of %d, e.g. %s",
                                         len(unreadable), len(unreadable) + len(images), unreadable[0])
    if not images:
        raise ValueError(f"calibration folder {str(root)!r}: none of its {len(unreadable)} images can be read, "
                         f"e.g. {unreadable[0]}")
    return torch.stack(images)
