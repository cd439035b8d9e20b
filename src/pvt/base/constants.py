"""Numbers that several layers share and that have exactly one home: the input normalisation every
PVT checkpoint of every ecosystem was trained with, and the bounds on every size a user or a file gives."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMG_SIZE", "MAX_BATCH", "MAX_WORKERS", "MAX_THREADS",
           "MAX_BUILTIN_IMAGES", "MAX_OBJECTS", "INTERPOLATIONS",
           "EVAL_CROP_PCT", "EVAL_INTERPOLATION", "FILE_LIMITS"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet-1K (inputs in [0, 1])."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet-1K (inputs in [0, 1])."""

# -- bounds on the sizes a user or a file may ask for: generous for real use, far below what would exhaust
# memory or run for days. Each is stated in the help text of the options it bounds.
MAX_IMG_SIZE = 4096
"""Largest image side (training crop, evaluation input, benchmark size, built-in data, a checkpoint's
``img_size``): 5x the detection recipe's 800; one 4096x4096 RGB float image is 200 MB."""
MAX_BATCH = 8192
"""Largest batch (training per process, evaluation, benchmark)."""
MAX_WORKERS = 128
"""Most data-loading processes."""
MAX_THREADS = 1024
"""Most CPU threads for torch ops."""
MAX_BUILTIN_IMAGES = 100_000
"""Most images of a built-in data set (``num_train`` / ``num_val``)."""
MAX_OBJECTS = 64
"""Most objects per image of the built-in shapes data."""
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear", "nearest")
"""The resize interpolations a training config or a checkpoint's evaluation input may name."""
EVAL_CROP_PCT: float = 0.875
"""The evaluation centre crop as a fraction of the resized side (224 of 256), as the official PVT
evaluation and ``pvt predict``."""
EVAL_INTERPOLATION: str = "bicubic"
"""The resize interpolation of the official PVT evaluation and ``pvt predict``."""

FILE_LIMITS: dict[str, int] = {
    "num_stages": 8, "depths": 1024, "embed_dims": 16384, "num_heads": 1024, "mlp_ratios": 64, "sr_ratios": 64,
    "patch_strides": 64, "img_size": MAX_IMG_SIZE, "in_chans": 64, "num_classes": 1_000_000, "pool_size": 1024,
}
"""The largest value a config read from a file may hold, per field (per stage for the tuples): generous
bounds on the published variants (at most 40 blocks a stage, 512 channels, 1000 classes), far below what
would exhaust memory."""
