"""Numbers that several layers share and that have exactly one home: the input normalisation every
PVT checkpoint of every ecosystem was trained with, and the bounds on every size a user or a file gives."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMG_SIZE", "MAX_BATCH", "MAX_WORKERS", "MAX_THREADS",
           "MAX_BUILTIN_IMAGES", "MAX_OBJECTS", "INTERPOLATIONS"]

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
