"""Object detection and instance segmentation as training tasks (:class:`pvt.engine.task.Task`).

* ``detection``: RetinaNet (or another box detector: Sparse R-CNN, ...) on COCO-format data; best
  checkpoint by ``bbox_mAP``.
* ``instance``: Mask R-CNN or Cascade Mask R-CNN on COCO-format data with masks; best by ``segm_mAP``.

``--data`` is a folder in COCO layout (``annotations/instances_{train,val}[2017].json`` and
``{train,val}[2017]/``); without it, the built-in shapes. ``--model`` is a dense model (``<head>_<backbone>``,
e.g. ``atss_pvt_v2_b2``) or a backbone (then RetinaNet, or Mask R-CNN for ``instance``). Task options
(``--opt KEY=VALUE``): ``max_size`` (longer side cap), ``multiscale`` (true: mmdet's 3x range, shorter side
640-800 at the 800 px scale; ``LO,HI``: that range; false: one scale; default: the head's recipe on real
data), ``crop`` (true: the official Sparse R-CNN / Cascade Mask R-CNN crop policy,
:class:`pvt.data.detection_transforms.RandomCropPolicy`; default: the head's recipe on real data),
``anchor_size`` (the smallest anchor in pixels, doubling per level: the paper's 32 on real data, 16 on the
built-in shapes), ``lr_steps`` (epochs, default 8/12 and 11/12 of the run; 27,33 for 36 epochs; one step at
3/4 of the run on the built-in data), ``train_ann``/``val_ann``/``train_images``/``val_images`` (explicit
paths); built-in data ``num_train`` (default 1024), ``num_val`` (50), ``shapes_size`` (image side, default
img_size). Head options, for the heads whose builder takes them (the paper's values by default on real
data, :data:`SHAPES_HEADS` on the built-in shapes): ``num_proposals`` (Sparse R-CNN's learned proposals),
``rois_per_image`` (Cascade Mask R-CNN's RoIs sampled per image per stage), ``test_proposals`` (its RPN
proposals per image at test), ``zero_reg_init`` (Sparse R-CNN's box regressors starting at zero: on by
default on the built-in shapes, which train from scratch).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.coco import CocoDataset, detection_collate
from ..data.detection_transforms import RandomCropPolicy
from ..engine.task import SKIPPED
from .backbone import apply_backbone_options
from .common import DENSE_RECIPE, DenseTask, dense_drop_path, predict_inputs, resolve_dense_model, shapes_root
from .metrics import coco_map, detections_to_coco
from .schedules import MultiStepLR
from .visualize import draw_detections, save_drawing

__all__ = ["DetectionTask", "InstanceTask", "PRESETS", "SHAPES_ANCHOR_SIZE", "SHAPES_HEADS", "HEAD_OPTIONS"]

log = logging.getLogger("pvt.train")

#: the paper's detection recipe (mmdet 1x): AdamW 1e-4, wd 1e-4, 12 epochs, 2 images per GPU
#: (x8 GPUs = the paper's 16), warm-up 500 iterations from 0.001 x lr, shorter side 800.
_COCO: dict[str, Any] = {**DENSE_RECIPE, "epochs": 12, "batch_size": 2, "img_size": 800, "warmup_epochs": 0.07,
                         "warmup_lr": 1e-7}
PRESETS: dict[str, dict[str, Any]] = {
    "coco": _COCO,
    #: built-in shapes: a CPU run of minutes, from scratch (no ImageNet weights), so higher learning rates,
    #: gradient clipping and no stochastic depth; 64 px images, 1024 training images (see docs/dense.md for
    #: the held-out scores these reach).
    "shapes": {**_COCO, "img_size": 64, "epochs": 8, "batch_size": 8, "lr": 5e-4, "warmup_epochs": 1.0,
               "clip_grad": 10.0, "drop_path": 0.0, "workers": 0},
}
"""The detection and instance recipes: ``coco`` for a data folder (with the head's own paper recipe over
it), ``shapes`` for the built-in shapes (with the head's :data:`SHAPES_HEADS` values over it)."""
#: the smallest anchor on the built-in shapes (10-56 px objects; the paper's 32 misses most at 64 px).
SHAPES_ANCHOR_SIZE = 16

#: options that are keywords of a head's builder (passed to it when the head takes them)
HEAD_OPTIONS = ("num_proposals", "rois_per_image", "test_proposals", "zero_reg_init")
BOOL_HEAD_OPTIONS = frozenset({"zero_reg_init"})

#: built-in shapes, per head: (config values, head options) over the ``shapes`` preset. The paper's values
#: are tuned for 800 px COCO images with pre-trained backbones; 64 px images with a few objects and a
#: from-scratch CPU run need fewer proposals / RoIs (see docs/detectors_cascade_sparse.md).
SHAPES_HEADS: dict[str, tuple[dict[str, Any], dict[str, int | bool]]] = {
    "cascade_mask_rcnn": ({"epochs": 2, "warmup_epochs": 0.25}, {"rois_per_image": 32, "test_proposals": 50}),
    "sparse_rcnn": ({"lr": 1e-3, "clip_grad": 1.0}, {"num_proposals": 30, "zero_reg_init": True}),
}

DETECTION_OPTIONS = frozenset({"max_size", "multiscale", "crop", "anchor_size", "lr_steps", "train_ann", "val_ann",
                               "train_images", "val_images", "num_train", "num_val", "shapes_size", *HEAD_OPTIONS})

class DetectionTask(DenseTask):
    """Box detection (see module docstring); RetinaNet when ``--model`` names only a backbone."""

    name = "detection"
    best_metric = "bbox_mAP"
    presets = PRESETS
    options = DETECTION_OPTIONS
    head = "retinanet"
    masks = False
    collate_fn = staticmethod(detection_collate)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.cat_ids: list[int] = []
        self.val_ds: CocoDataset | None = None
        self.anchor_size: int | None = None  # set from a checkpoint; else from the options / data
        self.head_options: dict[str, int | bool] | None = None  # likewise

    @classmethod
    def recipe(cls, user: dict[str, Any]) -> dict[str, Any]:
        """:meth:`DenseTask.recipe`, with the head's :data:`SHAPES_HEADS` values on the built-in data."""
        out = super().recipe(user)
        if user.get("data") is None and user.get("model") is not None:
            with contextlib.suppress(ValueError):  # an unknown model is named by validate()
                head = resolve_dense_model(user["model"], cls.name, cls.head).head.name
                out.update(SHAPES_HEADS.get(head, ({}, {}))[0])
        return out

    def validate(self) -> None:
        super().validate()
        self._anchor_size()
        self._multiscale()
        self._crop()
        self._head_options()
        steps = self.tcfg.task_options.get("lr_steps")
        if steps is not None:
            steps = steps if isinstance(steps, list) else [steps]
            if not all(isinstance(s, (int, float)) and 0 < s <= self.cfg.epochs for s in steps):
                raise ValueError(f"{self.name} task: option lr_steps={steps!r}: expected epochs in 1..{self.cfg.epochs}")

    # -- data
    def _paths(self) -> dict[str, Path]:
        opts = self.tcfg.task_options
        root = Path(self.cfg.data).expanduser() if self.cfg.data else shapes_root(self) / "coco"
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
        out = {}
        for split in ("train", "val"):
            ann = opts.get(f"{split}_ann")
            if ann is None:
                cands = [root / "annotations" / f"instances_{split}2017.json", root / "annotations" / f"instances_{split}.json"]
                ann = next((c for c in cands if c.is_file()), None)
                if ann is None:
                    raise FileNotFoundError(
                        f"data folder {str(root)!r}: no {cands[0].relative_to(root)} or {cands[1].relative_to(root)} "
                        f"(or pass --opt {split}_ann=FILE)"
                    )
            imgs = opts.get(f"{split}_images")
            if imgs is None:
                imgs = next((c for c in (root / f"{split}2017", root / split) if c.is_dir()), root / split)
            out[f"{split}_ann"], out[f"{split}_images"] = Path(ann), Path(imgs)
        return out

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        p = self._paths()
        train = CocoDataset(p["train_images"], p["train_ann"], masks=self.masks, train=True, hflip=self.tcfg.hflip,
                            transform=self._crop())
        val = CocoDataset(p["val_images"], p["val_ann"], masks=self.masks, train=False)
        if val.cat_ids != train.cat_ids:
            raise ValueError(f"{p['val_ann']}: categories {val.cat_ids} differ from the training file's {train.cat_ids}")
        self.class_names, self.cat_ids, self.val_ds = train.class_names, train.cat_ids, val
        for ds in (train, val):
            skips = {k: v for k, v in ds.skipped.items() if v}
            if skips:
                log.info("%s: %s", ds.ann_file, ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skips.items()))
        return train, val

    # -- model
    def _multiscale(self) -> tuple[int, int] | None:
        """The training range of the shorter side at the 800 px scale: the ``multiscale`` option (true: mmdet's
        3x range 640-800; two numbers: that range; false: one scale), else the head's recipe on real data."""
        value = self.tcfg.task_options.get("multiscale")
        if value is None:
            return self.spec.head.multiscale if self.cfg.data is not None else None
        if value is True:
            return (640, 800)
        if value is False:
            return None
        if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                and 0 < value[0] <= value[1]):
            return int(value[0]), int(value[1])
        raise ValueError(f"{self.name} task: option multiscale={value!r}: expected true, false or two shorter sides "
                         "LO,HI at the 800 px scale (e.g. 480,800)")

    def _crop(self) -> RandomCropPolicy | None:
        """The training crop policy (at the run's scale): the ``crop`` option, else the head's recipe on
        real data (Sparse R-CNN's and Cascade Mask R-CNN's official configs crop); None: no crop."""
        value = self.tcfg.task_options.get("crop")
        if value is None:
            value = dict(self.spec.head.recipe).get("crop", False) if self.cfg.data is not None else False
        if not isinstance(value, bool):
            raise ValueError(f"{self.name} task: option crop={value!r}: expected true or false")
        return RandomCropPolicy.scaled(self.tcfg.img_size) if value else None

    def _head_options(self) -> dict[str, int | bool]:
        """Keywords for the head's builder (:data:`HEAD_OPTIONS`): a checkpoint's, else the options, else the
        head's :data:`SHAPES_HEADS` values on the built-in data (else the builder's defaults, the paper's).
        A ValueError for an option the head does not take or a value that is not a positive integer."""
        if self.head_options is not None:
            return dict(self.head_options)
        head = self.spec.head
        module, _, function = head.builder.partition(":")
        takes = inspect.signature(getattr(importlib.import_module(module), function)).parameters
        preset = SHAPES_HEADS.get(head.name, ({}, {}))[1] if self.cfg.data is None else {}
        out = {}
        for key in HEAD_OPTIONS:
            value = self.tcfg.task_options.get(key, preset.get(key))
            if value is None:
                continue
            if key not in takes:
                raise ValueError(f"{self.name} task: option {key}: {head.description} does not take it "
                                 f"(its head options: {', '.join(k for k in HEAD_OPTIONS if k in takes) or 'none'})")
            if key in BOOL_HEAD_OPTIONS:
                if not isinstance(value, bool):
                    raise ValueError(f"{self.name} task: option {key}={value!r}: expected true or false")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name} task: option {key}={value!r}: expected a positive integer")
            out[key] = value
        return out

    def _sizes(self) -> dict[str, Any]:
        """The detector's resize: shorter side ``img_size`` (a range of them in training with multi-scale),
        longer side at most ``max_size`` (default 1333 at 800, scaled with img_size)."""
        opts = self.tcfg.task_options
        short = self.tcfg.img_size
        max_size = int(opts.get("max_size", round(short * 1333 / 800)))
        min_size: Any = short
        scales = self._multiscale()
        if scales is not None:
            lo, hi = (max(1, round(short * v / 800 / 32)) * 32 for v in scales)
            min_size = tuple(range(lo, hi + 1, 32)) or (short,)
        return {"min_size": min_size, "max_size": max_size}

    def _anchor_size(self) -> int | None:
        """The smallest anchor of an anchored head: a checkpoint's, else the option, else 16 px on the
        built-in shapes and the paper's elsewhere; None for anchor-free heads."""
        from ..dense.anchors import check_anchor_size

        paper = self.spec.head.anchor_size
        if paper is None:
            if "anchor_size" in self.tcfg.task_options:
                raise ValueError(f"{self.name} task: option anchor_size: {self.spec.head.description} has no anchors")
            return None
        if self.anchor_size is not None:
            return self.anchor_size
        value = self.tcfg.task_options.get("anchor_size", SHAPES_ANCHOR_SIZE if self.cfg.data is None else paper)
        try:
            return check_anchor_size(value)
        except ValueError as e:
            raise ValueError(f"{self.name} task: option {e}") from None

    def build_model(self) -> nn.Module:
        from ..dense import create_dense_model

        if not self.class_names:
            raise ValueError(f"{self.name} task: class names unknown; build_datasets first")
        anchors = self._anchor_size()
        model = create_dense_model(self.spec.name, num_classes=len(self.class_names), pretrained=self.cfg.pretrained,
                                   drop_path_rate=dense_drop_path(self.tcfg), **self._sizes(), **self._head_options(),
                                   **({"anchor_size": anchors} if anchors is not None else {}))
        return apply_backbone_options(model, self.tcfg)

    def build_scheduler(self, optimizer, steps_per_epoch: int):
        cfg = self.cfg
        steps = self.tcfg.task_options.get("lr_steps")
        if steps is None and cfg.data is None:  # built-in shapes: one x0.1 step at 3/4 of the run
            steps = [max(1, round(cfg.epochs * 3 / 4))]
        elif steps is None:
            steps = [27, 33] if cfg.epochs == 36 else [round(cfg.epochs * 8 / 12), round(cfg.epochs * 11 / 12)]
        steps = steps if isinstance(steps, list) else [steps]
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        ratio = cfg.warmup_lr / max(cfg.peak_lr(), 1e-12)
        return MultiStepLR(optimizer, [int(s * steps_per_epoch) for s in steps], 0.1, warmup, min(ratio, 1.0))

    # -- steps
    def batch_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        images, targets, _ = batch
        images = [i.to(device, non_blocking=True) for i in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        return loss, {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, images: list[Tensor], device: torch.device) -> list[dict[str, Tensor]]:
        model.eval()
        return model([i.to(device) for i in images])

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Sequence[str | Path], device: torch.device, *, topk: int = 5,
                score_thresh: float = 0.3, out_dir: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Detections scoring at least ``score_thresh``: ``{"class", "label", "score", "box"}`` (x1, y1, x2, y2
        pixels; ``mask_area`` with masks); with ``out_dir`` the boxes (and masks) drawn over each image.
        ``{"image", "error"}`` for an image that cannot be read."""
        if not 0 <= score_thresh <= 1:
            raise ValueError(f"score_thresh={score_thresh!r}: expected a number in [0, 1]")
        records: list[dict[str, Any]] = []
        for p, img, name in predict_inputs(images, records, progress):
            det = self.predict_batch(model, [img], device)[0]
            keep = det["scores"] >= score_thresh
            boxes = det["boxes"][keep].cpu().tolist()
            labels = det["labels"][keep].cpu().tolist()
            scores = det["scores"][keep].cpu().tolist()
            masks = (det["masks"][keep][:, 0] > 0.5).cpu().numpy() if "masks" in det else None
            found = [{"class": self.class_names[lab], "label": int(lab), "score": round(float(s), 4),
                      "box": [round(float(v), 1) for v in b]} for b, lab, s in zip(boxes, labels, scores)]
            for d, m in zip(found, masks if masks is not None else []):
                d["mask_area"] = int(m.sum())
            rec: dict[str, Any] = {"image": str(p), "detections": found}
            if out_dir is not None:
                rec["output"] = save_drawing(
                    draw_detections(img, boxes, labels, scores, self.class_names, masks), out_dir, name)
            records.append(rec)
        return records

    @classmethod
    def summary(cls, metrics: dict[str, Any]) -> str:
        keys = ["bbox_mAP", "bbox_mAP_50"] + (["segm_mAP", "segm_mAP_50"] if cls.masks else [])
        return "  ".join(f"{k} {metrics[k]:.2f}" for k in keys if k in metrics)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        ds = loader.dataset
        if not isinstance(ds, CocoDataset):
            raise ValueError("detection evaluation needs a CocoDataset loader")
        results: list[dict[str, Any]] = []
        ids: list[int] = []
        left_out = 0
        for images, targets, skipped in loader:
            left_out += skipped
            if not images:  # every image of the batch was unreadable
                continue
            for t, det in zip(targets, self.predict_batch(model, images, device)):
                ids.append(int(t["image_id"]))
                results += detections_to_coco(ids[-1], det, ds.cat_ids, masks=self.masks)
        out = {f"bbox_{k}": v for k, v in coco_map(ds.coco(), results, "bbox", ids).items()}
        if self.masks:
            out.update({f"segm_{k}": v for k, v in coco_map(ds.coco(), results, "segm", ids).items()})
        out["detections_per_image"] = len(results) / max(len(ids), 1)
        if left_out:
            out[SKIPPED] = float(left_out)
        return out

    # -- checkpoints
    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": self.name, "task_model": self.spec.name, "class_names": self.class_names,
                "cat_ids": self.cat_ids, "anchor_size": self._anchor_size(), "head_options": self._head_options(),
                **self._sizes()}

    def restore_extra(self, extra: dict[str, Any]) -> None:
        self.class_names = list(extra["class_names"])
        self.cat_ids = [int(c) for c in extra.get("cat_ids", range(1, len(self.class_names) + 1))]
        # checkpoints written before the option existed used the paper's anchors
        paper = self.spec.head.anchor_size
        recorded = extra.get("anchor_size", paper)
        self.anchor_size = None if recorded is None else int(recorded)
        if isinstance(extra.get("head_options"), dict):  # absent before the option existed: the paper's
            self.head_options = {str(k): bool(v) if k in BOOL_HEAD_OPTIONS else int(v)
                                 for k, v in extra["head_options"].items() if k in HEAD_OPTIONS}


class InstanceTask(DetectionTask):
    """Boxes and instance masks (see module docstring); Mask R-CNN when ``--model`` names only a backbone."""

    name = "instance"
    best_metric = "segm_mAP"
    head = "mask_rcnn"
    masks = True
