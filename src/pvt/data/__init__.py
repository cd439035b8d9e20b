"""Datasets and transforms for training: ImageFolder trees, WebDataset shards, the built-in digits, timm
transforms (and their batched version on the training device, :mod:`pvt.data.device`)."""

from .builtin import DIGITS_CLASSES, default_cache_dir, digits_folder
from .folder import (
                     IMG_EXTENSIONS,
                     ImageFolderDataset,
                     collate_skipping,
                     find_classes,
                     image_files,
                     load_rgb,
                     read_image,
                     readable_images,
)
from .shards import ShardDataset, is_shard_folder, read_index, write_shards
from .transforms import eval_transform, train_transform

__all__ = [
    "DIGITS_CLASSES",
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "ShardDataset",
    "collate_skipping",
    "default_cache_dir",
    "digits_folder",
    "eval_transform",
    "find_classes",
    "image_files",
    "is_shard_folder",
    "load_rgb",
    "read_image",
    "read_index",
    "readable_images",
    "train_transform",
    "write_shards",
]
