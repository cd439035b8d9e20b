"""What the dense-prediction tasks share: the paper's common dense recipe, the built-in shapes data
(made on first use), option checking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.task import Task
from ..variants import get_variant

__all__ = ["DENSE_COMMON", "SHAPES_NUM_TRAIN", "SHAPES_NUM_VAL", "DenseTask", "shapes_root", "check_options",
           "dense_drop_path"]

#: every dense recipe: AdamW 1e-4, weight decay 1e-4, no classification augmentation, no clipping, no EMA.
DENSE_COMMON: dict[str, Any] = {"mixup": 0.0, "cutmix": 0.0, "smoothing": 0.0, "reprob": 0.0, "aa": "none", "color_jitter": 0.0,
           "clip_grad": 0.0, "lr": 1e-4, "weight_decay": 1e-4, "model_ema": False}

#: built-in data set size when ``num_train`` / ``num_val`` are not given (``shapes_size`` defaults to img_size)
SHAPES_NUM_TRAIN, SHAPES_NUM_VAL = 1024, 50


def shapes_root(cfg) -> Path:
    """The built-in shapes data set for ``cfg`` (size and counts from its task options), made on first use."""
    from ..data.synthetic import default_shapes_root, make_shapes_dataset

    opts = cfg.task_options
    kw = {"num_train": int(opts.get("num_train", SHAPES_NUM_TRAIN)), "num_val": int(opts.get("num_val", SHAPES_NUM_VAL)),
          "size": int(opts.get("shapes_size", cfg.img_size))}
    base = Path(cfg.data_dir).expanduser() / "shapes" if cfg.data_dir else default_shapes_root()
    return make_shapes_dataset(base.with_name(f"shapes-{kw['num_train']}-{kw['num_val']}-{kw['size']}"), **kw)


def check_options(task: Task, accepted: set[str]) -> None:
    """A ValueError naming every option of ``task.cfg.task_options`` not in ``accepted``."""
    unknown = sorted(set(task.cfg.task_options) - accepted)
    if unknown:
        raise ValueError(f"{task.name} task: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(sorted(accepted))}")


def dense_drop_path(cfg) -> float:
    """Stochastic depth of a dense backbone: the config's, else 0.1 (the official dense configs')."""
    return cfg.drop_path if cfg.drop_path is not None else 0.1  # the official dense backbones' rate


class DenseTask(Task):
    """What every dense task shares: a backbone variant as ``--model``, named options, the built-in shapes
    preset when no data is given, and class names found in the data."""

    options: frozenset[str] = frozenset()
    """The task options (``--opt KEY=VALUE``) it accepts."""
    shapes_preset: dict[str, Any] = {}
    """TrainConfig values for the built-in shapes (used when ``data`` is None)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.class_names: list[str] = []

    @classmethod
    def data_defaults(cls, data: str | None) -> dict[str, Any]:
        return dict(cls.shapes_preset) if data is None else {}

    def validate(self) -> None:
        get_variant(self.cfg.model)  # the backbone: a ValueError naming close names
        check_options(self, set(self.options))
