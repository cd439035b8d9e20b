"""What the dense-prediction tasks share: the paper's common dense recipe, the built-in shapes data
(made on first use), option checking."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch import Tensor

from ..base.constants import MAX_BUILTIN_IMAGES, MAX_IMG_SIZE
from ..base.naming import unknown_name
from ..dense import DENSE_MODELS, HEADS, DenseModelSpec, get_dense_spec
from ..engine.task import StepResult, Task
from ..models.variants import VARIANTS
from .configs import DenseConfig

__all__ = ["DENSE_RECIPE", "SHAPES_NUM_TRAIN", "SHAPES_NUM_VAL", "DenseTask", "resolve_dense_model", "shapes_root",
           "check_options", "check_size_options", "SIZE_OPTIONS", "dense_drop_path"]

#: what every dense preset shares (each task's PRESETS add the schedule, batch and size): AdamW 1e-4, weight
#: decay 1e-4, no clipping, no EMA, flips, the dense backbones' stochastic depth (:func:`dense_drop_path`).
DENSE_RECIPE: dict[str, Any] = {"lr": 1e-4, "base_lr": 5e-4, "min_lr": 1e-5, "warmup_lr": 1e-6, "weight_decay": 1e-4,
                                "opt_eps": 1e-8, "clip_grad": 0.0, "model_ema": False, "model_ema_decay": 0.99996,
                                "hflip": 0.5, "drop_path": None}

#: built-in data set size when ``num_train`` / ``num_val`` are not given (``shapes_size`` defaults to img_size)
SHAPES_NUM_TRAIN, SHAPES_NUM_VAL = 1024, 50


def shapes_root(task: Task) -> Path:
    """The built-in shapes data set for ``task`` (size and counts from its task options), made on first use."""
    from ..data.synthetic import default_shapes_root, make_shapes_dataset

    opts, data_dir = task.tcfg.task_options, task.cfg.data_dir
    kw = {"num_train": int(opts.get("num_train", SHAPES_NUM_TRAIN)), "num_val": int(opts.get("num_val", SHAPES_NUM_VAL)),
          "size": int(opts.get("shapes_size", task.tcfg.img_size))}
    base = Path(data_dir).expanduser() / "shapes" if data_dir else default_shapes_root()
    return make_shapes_dataset(base.with_name(f"shapes-{kw['num_train']}-{kw['num_val']}-{kw['size']}"), **kw)


#: the task options that are sizes (built-in data counts, image sides), each with its bounds
SIZE_OPTIONS: dict[str, tuple[int, int]] = {
    "num_train": (1, MAX_BUILTIN_IMAGES), "num_val": (1, MAX_BUILTIN_IMAGES), "shapes_size": (32, MAX_IMG_SIZE),
    "test_size": (16, MAX_IMG_SIZE), "max_size": (16, 2 * MAX_IMG_SIZE)}


def check_size_options(task: Task) -> None:
    """A ValueError naming the first size option of ``task.tcfg.task_options`` (:data:`SIZE_OPTIONS`) that is
    not an integer within its bounds (``1e12`` built-in images would run for days)."""
    for key, (lo, hi) in SIZE_OPTIONS.items():
        v = task.tcfg.task_options.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not lo <= v <= hi or v != int(v):
            raise ValueError(f"{task.name} task: option {key}={v!r}: expected an integer {lo}..{hi}")


def check_options(task: Task, accepted: set[str]) -> None:
    """A ValueError naming every option of ``task.tcfg.task_options`` not in ``accepted``."""
    unknown = sorted(set(task.tcfg.task_options) - accepted)
    if unknown:
        raise ValueError(f"{task.name} task: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(sorted(accepted))}")


def resolve_dense_model(model: str, task: str | None = None, head: str | None = None) -> DenseModelSpec:
    """The dense model ``model`` names: ``<head>_<backbone>``, or a backbone with ``head``. With ``task``,
    the model must be one that task trains. ValueError naming close names otherwise."""
    if model in VARIANTS and head:
        return get_dense_spec(f"{head}_{model}")
    try:
        spec = get_dense_spec(model)
    except ValueError:
        choices = [*VARIANTS, *(n for n, s in DENSE_MODELS.items() if task is None or s.task == task)]
        raise unknown_name("model", model, choices, "accepted: a backbone (pvt models) or <head>_<backbone> with "
                           f"heads {', '.join(h.name for h in HEADS.values() if task is None or h.task == task)}") from None
    if task is not None and spec.task != task:
        raise ValueError(f"model {spec.name!r} ({spec.head.description}) is trained by --task {spec.task}, not {task}")
    return spec


def dense_drop_path(cfg: DenseConfig) -> float:
    """Stochastic depth of a dense backbone: the config's, else 0.1 (the official dense configs')."""
    return cfg.drop_path if cfg.drop_path is not None else 0.1  # the official dense backbones' rate


def predict_inputs(images: Sequence[str | Path], records: list[dict[str, Any]],
                   progress: Callable[[int, int], None] | None) -> Iterator[tuple[str | Path, Tensor, str]]:
    """``(path, image, drawing name)`` of each readable image in turn, for a dense task's ``predict``; an
    unreadable one adds ``{"image", "error"}`` to ``records``; ``progress(done, total)`` after each."""
    from ..data import readable_images
    from .visualize import drawing_names

    for i, ((p, img, why), name) in enumerate(zip(readable_images(images), drawing_names(images)), start=1):
        if progress is not None:
            progress(i, len(images))
        if img is None:
            records.append({"image": str(p), "error": why})
        else:
            yield p, img, name


class DenseTask(Task):
    """What every dense task shares: ``--model`` naming a dense model (``<head>_<backbone>``) or just a
    backbone (then the task's default head), named options, the ``shapes`` preset when no data is given,
    and class names found in the data."""

    config_class = DenseConfig
    head: str = ""
    """The head trained when ``--model`` names only a backbone."""
    options: frozenset[str] = frozenset()
    """The task options (``--opt KEY=VALUE``) it accepts."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.class_names: list[str] = []

    @classmethod
    def preset_name(cls, user: dict[str, Any]) -> str:
        """``shapes`` on the built-in data, else the task's first preset (its paper recipe)."""
        return "shapes" if user.get("data") is None else next(iter(cls.presets))

    @classmethod
    def recipe(cls, user: dict[str, Any]) -> dict[str, Any]:
        """The preset; on real data with the paper's recipe of the head ``--model`` names over it (the
        head's task options, e.g. ``crop``, are read by the task from the head itself)."""
        out = super().recipe(user)
        if user.get("data") is not None and user.get("model") is not None:
            with contextlib.suppress(ValueError):  # an unknown model is named by validate()
                head = resolve_dense_model(user["model"], cls.name, cls.head).head
                out.update((k, v) for k, v in head.recipe if k not in cls.options)
        return out

    def eval_dataset(self, split: str = "val") -> Any:
        """The validation split of the training data (the built-in shapes when ``data`` is None)."""
        if split != "val":
            raise ValueError(f"{self.name} task: split {split!r}: expected 'val'")
        return self.build_datasets()[1]

    def train_step(self, model: Any, batch: Any, device: Any) -> StepResult:
        """:meth:`batch_loss` of ``batch`` (images, targets, skipped): the collate functions have left out, and
        counted, the unreadable images; a batch that kept none trains nothing."""
        images, _, skipped = batch
        if len(images) == 0:
            return StepResult(None, 0, int(skipped))
        loss, logs = self.batch_loss(model, batch, device)
        return StepResult(loss, len(images), int(skipped), logs)

    def batch_loss(self, model: Any, batch: Any, device: Any) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss of a batch of at least one image, and floats for the progress bar (*required*)."""
        raise NotImplementedError

    @property
    def spec(self) -> DenseModelSpec:
        """The dense model ``cfg.model`` names."""
        return resolve_dense_model(self.cfg.model, self.name, self.head)

    def validate(self) -> None:
        self.spec  # noqa: B018  (a ValueError naming close names when the model is unknown)
        check_options(self, set(self.options))
        check_size_options(self)
