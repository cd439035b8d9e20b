"""Monocular depth as a training task: GLPN on NYU Depth v2's folder layout (or the built-in synthetic depth
set); trained with the scale-invariant log loss, scored with the standard metrics (AbsRel, SqRel, RMSE,
RMSE log, delta < 1.25 / 1.25^2 / 1.25^3, per image over the pixels with a depth, then averaged); best
checkpoint by delta1. Options (``--opt KEY=VALUE``): for the built-in data ``num_train``, ``num_val``,
``shapes_size``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import read_image
from ..engine.task import SKIPPED
from .common import DENSE_RECIPE, SHAPES_NUM_TRAIN, SHAPES_NUM_VAL, DenseTask, dense_drop_path
from .schedules import poly_schedule
from .visualize import drawing_names, save_drawing

__all__ = ["DepthTask", "PRESETS", "silog_loss", "depth_metrics", "colourise_depth", "DEPTH_METRICS"]

#: GLPN's NYU recipe: Adam(W) 1e-4, 25 epochs, batch 12 (here 2 per device), 448 crops, poly decay.
_NYU: dict[str, Any] = {**DENSE_RECIPE, "epochs": 25, "batch_size": 2, "img_size": 448, "warmup_epochs": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    "nyu": _NYU,
    #: the built-in depth set: 64 px renders, a short run
    "shapes": {**_NYU, "img_size": 64, "epochs": 6, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0.5,
               "clip_grad": 1.0, "drop_path": 0.0, "workers": 0},
}
"""The depth recipes: ``nyu`` for a data folder, ``shapes`` for the built-in renders."""
DEPTH_OPTIONS = frozenset({"num_train", "num_val", "shapes_size"})
DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
_MIN_DEPTH = 1e-3


def silog_loss(pred: Tensor, target: Tensor, lambd: float = 0.5) -> Tensor:
    """Scale-invariant log loss (Eigen et al., 2014), as GLPN trains: ``sqrt(mean(d^2) - lambd * mean(d)^2)`` with
    ``d = log target - log pred`` over the pixels with a depth (``target > 0``)."""
    valid = target > 0
    if not bool(valid.any()):
        return pred.sum() * 0.0
    d = torch.log(target[valid]) - torch.log(pred[valid].clamp_min(_MIN_DEPTH))
    return torch.sqrt((d.pow(2).mean() - lambd * d.mean().pow(2)).clamp_min(1e-12))


def depth_metrics(pred: Tensor, target: Tensor) -> dict[str, float] | None:
    """The standard metrics of one image over its pixels with a depth (None when it has none); delta in percent."""
    valid = target > 0
    if not bool(valid.any()):
        return None
    p, t = pred[valid].double().clamp_min(_MIN_DEPTH), target[valid].double()
    ratio = torch.maximum(p / t, t / p)
    return {
        "abs_rel": float(((p - t).abs() / t).mean()),
        "sq_rel": float(((p - t).pow(2) / t).mean()),
        "rmse": float((p - t).pow(2).mean().sqrt()),
        "rmse_log": float((p.log() - t.log()).pow(2).mean().sqrt()),
        **{f"delta{k}": float((ratio < 1.25 ** k).double().mean() * 100) for k in (1, 2, 3)},
    }


def colourise_depth(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """``(H, W)`` metres -> ``(H, W, 3) uint8``: near yellow through red and purple to far dark blue (a
    magma-like ramp of our own)."""
    t = np.clip(depth / max(max_depth, 1e-6), 0.0, 1.0)[..., None]
    stops = np.array([[252, 253, 191], [251, 136, 97], [183, 55, 121], [81, 18, 124], [0, 0, 4]], np.float32)
    x = t * (len(stops) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(stops) - 2)
    f = x - i
    return (stops[i[..., 0]] * (1 - f) + stops[i[..., 0] + 1] * f).round().astype(np.uint8)


def _collate(batch):
    """``(images, depths, skipped)`` as the other dense tasks' collates (an unreadable sample is None)."""
    kept = [b for b in batch if b is not None]
    images, depths = tuple(zip(*kept)) or ((), ())
    if images and all(i.shape == images[0].shape for i in images):
        return torch.stack(images), torch.stack(depths), len(batch) - len(kept)
    return list(images), list(depths), len(batch) - len(kept)


class DepthTask(DenseTask):
    """GLPN (see module docstring)."""

    name = "depth"
    best_metric = "delta1"
    head = "glpn"
    presets = PRESETS
    options = DEPTH_OPTIONS
    collate_fn = staticmethod(_collate)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        from ..data.depth import NYUDepthFolder, SyntheticDepth

        cfg, opts = self.tcfg, self.tcfg.task_options
        self.class_names = ["depth"]
        if self.cfg.data is None:
            size = int(opts.get("shapes_size", cfg.img_size))
            return (SyntheticDepth(int(opts.get("num_train", SHAPES_NUM_TRAIN)), size, "train", cfg.hflip),
                    SyntheticDepth(int(opts.get("num_val", SHAPES_NUM_VAL)), size, "val"))
        root = Path(self.cfg.data).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
        return (NYUDepthFolder(root, "train", cfg.img_size, True, cfg.hflip),
                NYUDepthFolder(root, "test", cfg.img_size, False))

    def build_model(self) -> nn.Module:
        from ..dense import create_dense_model
        from .backbone import apply_backbone_options

        model = create_dense_model(self.spec.name, pretrained=self.cfg.pretrained,
                                   drop_path_rate=dense_drop_path(self.tcfg))
        return apply_backbone_options(model, self.tcfg)

    def build_scheduler(self, optimizer, steps_per_epoch: int):
        return poly_schedule(self.cfg, optimizer, steps_per_epoch)

    def batch_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        images, depths, _ = batch
        if isinstance(images, list):
            raise ValueError("depth training needs equal-size crops (got a list of sizes)")
        images, depths = images.to(device, non_blocking=True), depths.to(device, non_blocking=True)
        return silog_loss(model(images).float(), depths), {}

    @torch.no_grad()
    def predict_depth(self, model: nn.Module, image: Tensor, device) -> Tensor:
        """``(3, h, w)`` -> ``(h, w)`` metres."""
        return model(image[None].to(device)).float()[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        sums = dict.fromkeys(DEPTH_METRICS, 0.0)
        n = left_out = 0
        for images, depths, skipped in loader:
            left_out += skipped
            for img, dep in zip(images, depths):
                m = depth_metrics(self.predict_depth(model, img, device).cpu(), dep)
                if m is not None:
                    n += 1
                    for k in sums:
                        sums[k] += m[k]
        out = {k: v / max(n, 1) for k, v in sums.items()}
        return {**out, SKIPPED: float(left_out)} if left_out else out

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Sequence[str | Path], device: torch.device, *, topk: int = 5,
                score_thresh: float = 0.3, out_dir: str | Path | None = None) -> list[dict[str, Any]]:
        """Each image's depth range and median in metres; with ``out_dir`` a coloured depth map (near: yellow,
        far: dark blue) beside the image."""
        from PIL import Image

        records = []
        max_depth = float(getattr(model, "max_depth", 10.0))
        for p, name in zip(images, drawing_names(images)):
            img = read_image(p)
            depth = self.predict_depth(model, img, device).cpu().numpy()
            rec: dict[str, Any] = {"image": str(p), "depth_min": round(float(depth.min()), 3),
                                   "depth_median": round(float(np.median(depth)), 3),
                                   "depth_max": round(float(depth.max()), 3)}
            if out_dir is not None:
                photo = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                both = np.concatenate([photo, colourise_depth(depth, max_depth)], axis=1)
                rec["output"] = save_drawing(Image.fromarray(both), out_dir, name)
            records.append(rec)
        return records

    @classmethod
    def summary(cls, metrics: dict[str, Any]) -> str:
        return "  ".join(f"{k} {metrics[k]:.3f}" for k in ("abs_rel", "rmse", "delta1") if k in metrics)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": self.name, "task_model": self.spec.name, "class_names": ["depth"], "img_size": self.tcfg.img_size}

    def restore_extra(self, extra: dict[str, Any]) -> None:
        self.class_names = ["depth"]
