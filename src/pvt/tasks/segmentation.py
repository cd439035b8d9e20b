"""Semantic segmentation as a training task: Semantic FPN or SegFormer on ADE20K-format data (or the
built-in shapes); best checkpoint by mIoU. Options (``--opt KEY=VALUE``): ``test_size`` (shorter side at
evaluation, default img_size), ``reduce_zero_label``, ``poly_power`` (default: the head's recipe's, else
0.9), and for the built-in data ``num_train``, ``num_val``, ``shapes_size``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.ade import IGNORE_INDEX, ADE20KDataset, segmentation_collate
from ..engine.task import SKIPPED
from .backbone import apply_backbone_options
from .common import DENSE_RECIPE, DenseTask, dense_drop_path, predict_inputs, shapes_root
from .metrics import ConfusionMatrix
from .schedules import poly_schedule
from .visualize import draw_segmentation, save_drawing

__all__ = ["SegmentationTask", "PRESETS"]

#: the paper's segmentation recipe: AdamW 1e-4, wd 1e-4 (the official mmseg config), poly 0.9,
#: 512 crops, 2 per GPU; 40k iterations at batch 16 are ~32 ADE20K epochs.
_ADE20K: dict[str, Any] = {**DENSE_RECIPE, "epochs": 32, "batch_size": 2, "img_size": 512, "warmup_epochs": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    "ade20k": _ADE20K,
    #: built-in shapes (see the detection task)
    "shapes": {**_ADE20K, "img_size": 64, "epochs": 8, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1.0,
               "clip_grad": 1.0, "drop_path": 0.0, "workers": 0},
}
"""The segmentation recipes: ``ade20k`` for a data folder (with the head's own paper recipe over it, e.g.
SegFormer's), ``shapes`` for the built-in shapes."""
SEGMENTATION_OPTIONS = frozenset({"test_size", "reduce_zero_label", "num_train", "num_val", "shapes_size", "poly_power"})


class SegmentationTask(DenseTask):
    """Semantic FPN (see module docstring)."""

    name = "segmentation"
    best_metric = "mIoU"
    head = "semfpn"
    presets = PRESETS
    options = SEGMENTATION_OPTIONS
    collate_fn = staticmethod(segmentation_collate)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.per_class_iou: list[float] = []

    def _scale(self, size: int) -> tuple[int, int]:
        return (size * 4, size)  # mmseg's (2048, 512) at 512

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        cfg, opts = self.tcfg, self.tcfg.task_options
        root = Path(self.cfg.data).expanduser() if self.cfg.data else shapes_root(self) / "ade"
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
        rz = bool(opts.get("reduce_zero_label", True))
        test = int(opts.get("test_size", cfg.img_size))
        train = ADE20KDataset(root, "training", train=True, crop_size=cfg.img_size, scale=self._scale(cfg.img_size),
                              reduce_zero_label=rz, hflip=cfg.hflip)
        val = ADE20KDataset(root, "validation", train=False, scale=self._scale(test), reduce_zero_label=rz,
                            num_classes=train.num_classes)
        val.check_labels()  # a bad validation label map stops the run now, not after the first epoch
        self.class_names = train.class_names
        return train, val

    def build_model(self) -> nn.Module:
        from ..dense import create_dense_model

        if not self.class_names:
            raise ValueError("segmentation task: class names unknown; build_datasets first")
        model = create_dense_model(self.spec.name, num_classes=len(self.class_names),
                                   pretrained=self.cfg.pretrained, drop_path_rate=dense_drop_path(self.tcfg))
        return apply_backbone_options(model, self.tcfg)

    def build_scheduler(self, optimizer, steps_per_epoch: int):
        # mmseg's poly power: 0.9 (Semantic FPN), 1.0 (SegFormer's recipe); --opt poly_power=P overrides
        power = float(self.tcfg.task_options.get("poly_power", dict(self.spec.head.recipe).get("poly_power", 0.9)))
        return poly_schedule(self.cfg, optimizer, steps_per_epoch, power)

    def batch_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        images, labels, _ = batch
        if isinstance(images, list):
            raise ValueError("segmentation training needs equal-size crops (got a list of sizes)")
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), {}

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, image: Tensor, out_size: tuple[int, int], device) -> Tensor:
        """``(3, h, w)`` -> ``(K, *out_size)`` logits (mmseg's whole-image inference)."""
        logits = model(image[None].to(device))
        return F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        cm = ConfusionMatrix(len(self.class_names), IGNORE_INDEX)
        left_out = 0
        for images, labels, skipped in loader:
            left_out += skipped
            for img, lab in zip(images, labels):
                pred = self.predict_logits(model, img, tuple(lab.shape[-2:]), device).argmax(0)
                cm.update(pred, lab)
        res = cm.compute()
        self.per_class_iou = res.pop("per_class_iou")
        return {**res, SKIPPED: float(left_out)} if left_out else res

    def evaluation_details(self) -> dict[str, Any]:
        return {"per_class_iou": dict(zip(self.class_names, self.per_class_iou))}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Sequence[str | Path], device: torch.device, *, topk: int = 5,
                score_thresh: float = 0.3, out_dir: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """The fraction of each image's pixels per predicted class (``class_fractions``); with ``out_dir``
        the class map drawn over each image. ``{"image", "error"}`` for an image that cannot be read."""
        records: list[dict[str, Any]] = []
        for p, img, name in predict_inputs(images, records, progress):
            seg = self.predict_logits(model, img, tuple(img.shape[-2:]), device).argmax(0).cpu().numpy()
            counts = np.bincount(seg.reshape(-1), minlength=len(self.class_names)) / seg.size
            rec: dict[str, Any] = {"image": str(p), "class_fractions": {
                n: round(float(c), 4) for n, c in zip(self.class_names, counts) if c > 0}}
            if out_dir is not None:
                rec["output"] = save_drawing(draw_segmentation(img, seg, self.class_names), out_dir, name)
            records.append(rec)
        return records

    @classmethod
    def summary(cls, metrics: dict[str, Any]) -> str:
        return "  ".join(f"{k} {metrics[k]:.2f}" for k in ("mIoU", "aAcc", "mAcc") if k in metrics)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": self.name, "task_model": self.spec.name, "class_names": self.class_names,
                "img_size": self.tcfg.img_size}

    def restore_extra(self, extra: dict[str, Any]) -> None:
        self.class_names = list(extra["class_names"])
