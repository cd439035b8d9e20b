"""Depth data: the built-in synthetic depth set and NYU Depth v2's folder layout, as ``(image, depth)`` pairs.

``image``: ``(3, H, W)`` float in [0, 1]; ``depth``: ``(H, W)`` float metres, 0 where unknown.

* Built-in (:class:`SyntheticDepth`): the shapes of :mod:`pvt.data.synthetic` rendered with known depth: the
  background is a tilted plane (a floor receding upwards, 4-10 m), every shape a flat card at its own depth
  (1.5-4 m), drawn larger the nearer it is, nearer cards hiding farther ones. Deterministic per seed, in memory.
* NYU Depth v2 (:class:`NYUDepthFolder`): ``root/{train,test}/**/rgb_NNNNN.jpg`` beside ``sync_depth_NNNNN.png``
  (16-bit PNG, millimetres; 0 = no reading), the layout of the common NYU Depth v2 training release.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .synthetic import SHAPE_CLASSES, _background, _draw_mask

__all__ = ["SyntheticDepth", "NYUDepthFolder", "check_depth_pair", "render_depth_sample"]


def render_depth_sample(seed: int, size: int = 64, max_objects: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(size, size, 3) uint8`` image and ``(size, size) float32`` depth in metres (see the module doc)."""
    rng = np.random.default_rng(seed)
    img = _background(rng, size)
    yy = np.mgrid[0:size, 0:size][0].astype(np.float32) / max(size - 1, 1)
    near, far = rng.uniform(4.0, 6.0), rng.uniform(7.0, 10.0)
    depth = far + (near - far) * yy  # the floor: far at the top, near at the bottom
    img = img * (0.55 + 0.45 * yy[..., None])  # and darker with distance, a cue the network can use
    cards = sorted((rng.uniform(1.5, 4.0) for _ in range(int(rng.integers(1, max_objects + 1)))), reverse=True)
    for z in cards:  # far to near: nearer cards are drawn over farther ones
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        r = size * 0.5 / z
        cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
        mask = _draw_mask(kind, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        colour = rng.random(3).astype(np.float32)
        img = np.where(mask[..., None], colour, img)
        depth = np.where(mask, np.float32(z), depth)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32)


def check_depth_pair(image: Tensor, depth: Tensor, source: str) -> None:
    """A ValueError naming ``source`` when the depth map does not fit the image or holds NaN / negative values."""
    if depth.ndim != 2 or tuple(depth.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"{source}: depth map of size {tuple(depth.shape)} for an image of "
                         f"{tuple(image.shape[-2:])}; they must be the same size")
    if not bool(torch.isfinite(depth).all()):
        raise ValueError(f"{source}: depth map holds NaN or infinite values; accepted: finite metres (0 = unknown)")
    if bool((depth < 0).any()):
        raise ValueError(f"{source}: depth map holds negative values; accepted: metres >= 0 (0 = unknown)")


def _to_tensors(img: np.ndarray, depth: np.ndarray) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0, torch.from_numpy(np.array(depth))


class SyntheticDepth(Dataset):
    """``num`` rendered samples of side ``size``; ``split`` picks disjoint seeds (train from 0, val from 10^6)."""

    def __init__(self, num: int, size: int = 64, split: str = "train", hflip: float = 0.0):
        self.num, self.size, self.hflip = int(num), int(size), float(hflip) if split == "train" else 0.0
        self.offset = 0 if split == "train" else 1_000_000

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < self.num:
            raise IndexError(f"sample {i} of a {self.num}-sample synthetic depth set")  # ends plain iteration
        img, depth = _to_tensors(*render_depth_sample(self.offset + i, self.size))
        if self.hflip and torch.rand(()) < self.hflip:
            img, depth = img.flip(-1), depth.flip(-1)
        return img, depth


class NYUDepthFolder(Dataset):
    """NYU Depth v2 pairs under ``root/split`` (module doc), resized so the shorter side is ``size`` (depth by
    nearest neighbour) and centre-cropped to ``size x size`` for training (whole for evaluation)."""

    def __init__(self, root: str | Path, split: str, size: int, train: bool, hflip: float = 0.0):
        folder = Path(root).expanduser() / split
        if not folder.is_dir():
            raise FileNotFoundError(f"NYU Depth v2 folder {str(folder)!r} does not exist (expected root/{split})")
        self.pairs = []
        for rgb in sorted(folder.rglob("rgb_*.jpg")):
            d = rgb.with_name(rgb.name.replace("rgb_", "sync_depth_")).with_suffix(".png")
            if d.is_file():
                self.pairs.append((rgb, d))
        if not self.pairs:
            raise ValueError(f"{str(folder)!r} holds no rgb_*.jpg with a sync_depth_*.png beside it")
        self.size, self.train, self.hflip = int(size), train, float(hflip) if train else 0.0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        rgb_path, depth_path = self.pairs[i]
        with Image.open(rgb_path) as im:
            rgb = im.convert("RGB")
        with Image.open(depth_path) as dm:
            dm.load()
            depth = np.asarray(dm, dtype=np.float32) / 1000.0  # millimetres -> metres
        img, dep = _to_tensors(np.asarray(rgb), depth)
        check_depth_pair(img, dep, str(depth_path))
        h, w = img.shape[-2:]
        s = self.size / min(h, w)
        hw = (max(1, round(h * s)), max(1, round(w * s)))
        img = torch.nn.functional.interpolate(img[None], size=hw, mode="bilinear", align_corners=False)[0]
        dep = torch.nn.functional.interpolate(dep[None, None], size=hw, mode="nearest")[0, 0]
        if self.train:
            top, left = (hw[0] - self.size) // 2, (hw[1] - self.size) // 2
            img, dep = img[:, top:top + self.size, left:left + self.size], dep[top:top + self.size, left:left + self.size]
            if self.hflip and torch.rand(()) < self.hflip:
                img, dep = img.flip(-1), dep.flip(-1)
        return img, dep
