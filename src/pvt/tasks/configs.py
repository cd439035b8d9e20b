"""Each task's own typed config: the values only that task reads, beside the engine's
:class:`~pvt.engine.config.TrainConfig` (checked by the same field machinery, written to the same flat
``config.yaml``). Kept free of torch, so that ``pvt train --help`` lists every option cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from ..base.constants import EVAL_CROP_PCT, EVAL_INTERPOLATION, INTERPOLATIONS, MAX_IMG_SIZE
from ..engine.config import TaskConfig, _f

__all__ = ["BackboneConfig", "ClassificationConfig", "DenseConfig", "TASK_CONFIGS", "use_repeated_aug"]


@dataclass
class BackboneConfig(TaskConfig):
    """What every task's model and input share: the input size, flips, stochastic depth and the backbone
    options (:func:`pvt.tasks.backbone.apply_backbone_options`)."""

    img_size: int = _f(224, "input size: classification's training and evaluation crop; the dense tasks' "
                       "shorter side (detection) or crop (segmentation, depth)", min=16, max=MAX_IMG_SIZE)
    hflip: float = _f(0.5, "horizontal-flip probability", min=0.0, max=1.0)
    drop_path: float | None = _f(None, "stochastic depth (None: the variant's official rate; 0.1 for the dense "
                                 "tasks' backbones)", min=0.0, max=1.0)
    grad_checkpointing: bool = _f(False, "recompute each backbone block in the backward pass: far less activation "
                                  "memory, the same gradients, for a second forward pass of the blocks")
    frozen_stages: int = _f(-1, "freeze the backbone's first patch embedding (0) or first N stages (no gradients, "
                            "eval mode), as mmdetection; -1: none", min=-1, max=4)
    norm_eval: bool = _f(False, "keep the backbone's BatchNorm layers in eval mode while training, as mmdetection "
                         "(PVT's own norms are LayerNorms, which this leaves alone)")
    freeze_backbone: bool = _f(False, "train only what is not the backbone (classification: linear probing of the "
                               "head); the backbone frozen, in eval mode")


@dataclass
class ClassificationConfig(BackboneConfig):
    """Classification: DeiT's augmentation, mixup / cutmix, label smoothing, crops, repeated augmentation."""

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
    scale: list[float] = _f(None, "random-resized-crop area range", factory=lambda: [0.08, 1.0], pair="unit")
    ratio: list[float] = _f(None, "random-resized-crop aspect-ratio range", factory=lambda: [0.75, 4 / 3],
                            pair="positive")
    interpolation: str = _f(EVAL_INTERPOLATION, "resize interpolation", choices=INTERPOLATIONS)
    crop_pct: float = _f(EVAL_CROP_PCT, "evaluation: centre crop / resize ratio (224/256)", min=0.1, max=1.0)
    repeated_aug: bool | None = _f(None, "repeated augmentation (the official sampler): each image 3 times per epoch "
                                   "in different augmentations, spread over the processes, the epoch cut to the "
                                   "data's length. Default: on under torchrun with more than one process, off in "
                                   "one process, as DeiT's and PVT's main.py; --repeated-aug / --no-repeated-aug "
                                   "force it")
    device_augment: bool = _f(False, "decode JPEGs and run the training augmentation in batches on the training "
                              "device (nvJPEG and tensor ops on a GPU); loader workers only read files")


@dataclass
class DenseConfig(BackboneConfig):
    """Detection, instance and semantic segmentation, depth: the backbone's values and the task options
    (``--opt KEY=VALUE``, each task's own, checked by the task)."""


TASK_CONFIGS: tuple[type[TaskConfig], ...] = (ClassificationConfig, DenseConfig)
"""Every task config class (each task names its own as ``config_class``): ``pvt train``'s flags."""


def use_repeated_aug(setting: bool | None, world_size: int) -> bool:
    """Whether a run samples with repeated augmentation: ``setting`` when given (the flag forces it), else
    on exactly when more than one process trains (DeiT's and PVT's ``main.py`` use their RASampler only
    when distributed; in one process the 3 copies of an image fall into the same few batches, so each step
    sees fewer different images, which lowered the held-out accuracy: docs/classification.md)."""
    return setting if setting is not None else world_size > 1
