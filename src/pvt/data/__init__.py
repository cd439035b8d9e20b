"""Datasets and transforms for training: ImageFolder trees, the built-in digits, timm transforms."""

from .builtin import DIGITS_CLASSES, default_cache_dir, digits_folder
from .folder import IMG_EXTENSIONS, ImageFolderDataset, collate_skipping, find_classes, load_rgb, read_image
from .transforms import eval_transform, train_transform

__all__ = [
    "DIGITS_CLASSES",
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "collate_skipping",
    "default_cache_dir",
    "digits_folder",
    "eval_transform",
    "find_classes",
    "load_rgb",
    "read_image",
    "train_transform",
]
