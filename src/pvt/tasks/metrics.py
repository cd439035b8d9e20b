"""Scores for dense prediction: COCO box / mask mAP (pycocotools COCOeval) and segmentation mIoU.

* :func:`coco_map` turns per-image detector outputs into COCO results and runs COCOeval; the keys are
  ``mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l`` in percent (-1 where COCO has no such objects: 0 here).
* :class:`ConfusionMatrix` accumulates ``(K, K)`` counts (rows: truth, columns: prediction), ignoring a
  label value; :meth:`ConfusionMatrix.compute` gives mIoU, per-class IoU, pixel accuracy (aAcc) and
  mean class accuracy (mAcc) as mmsegmentation does (classes absent from both truth and prediction
  are left out of the means).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["coco_map", "detections_to_coco", "ConfusionMatrix", "COCO_STAT_NAMES"]

COCO_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def detections_to_coco(
    image_id: int, det: dict[str, Tensor], cat_ids: Sequence[int], masks: bool = False, mask_thresh: float = 0.5
) -> list[dict[str, Any]]:
    """One image's ``{"boxes", "scores", "labels"[, "masks"]}`` -> COCO result records.

    Boxes are x1, y1, x2, y2 in the original image's pixels; labels index ``cat_ids``.
    """
    boxes = det["boxes"].detach().float().cpu()
    scores = det["scores"].detach().float().cpu().tolist()
    labels = det["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    out = [
        {"image_id": int(image_id), "category_id": int(cat_ids[lab]), "bbox": [round(v, 3) for v in b], "score": s}
        for b, s, lab in zip(xywh, scores, labels)
    ]
    if masks and "masks" in det:
        from ..data.coco import pycocotools

        mask_utils = pycocotools("mask")
        m = det["masks"].detach().cpu()
        if m.ndim == 4:
            m = m[:, 0]
        binary = (m > mask_thresh).numpy().astype(np.uint8)
        for rec, mk in zip(out, binary):
            rle = mask_utils.encode(np.asfortranarray(mk))
            rle["counts"] = rle["counts"].decode("ascii")
            rec["segmentation"] = rle
    return out


def coco_map(coco_gt, results: list[dict[str, Any]], iou_type: str = "bbox",
             image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCOeval's six AP numbers (percent) for ``results`` against the ``COCO`` object ``coco_gt``.

    ``image_ids`` restricts the evaluation (default: every image of ``coco_gt``). No results: all 0.
    """
    from ..data.coco import pycocotools

    COCOeval = pycocotools("cocoeval").COCOeval  # noqa: N806 - the class
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not results:
        return {k: 0.0 for k in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(float(v), 0.0) * 100 for k, v in zip(COCO_STAT_NAMES, ev.stats[:6])}


class ConfusionMatrix:
    """Pixel confusion counts for ``num_classes`` classes; ``ignore_index`` pixels are left out."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a prediction ``(..., H, W)`` of class indices and its truth of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).cpu().long(), target.reshape(-1).cpu().long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        k = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"label values must be in 0..{k - 1} or {self.ignore_index}")
        self.mat += torch.bincount(target * k + pred.clamp(0, k - 1), minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Any]:
        """``mIoU``, ``aAcc``, ``mAcc`` (percent) and ``per_class_iou`` (list, NaN for absent classes)."""
        m = self.mat.double()
        tp = m.diag()
        truth, predicted = m.sum(1), m.sum(0)
        union = truth + predicted - tp
        iou = tp / union  # NaN where a class is in neither
        acc = tp / truth
        total = m.sum()
        return {
            "mIoU": float(np.nanmean(iou.numpy())) * 100 if (union > 0).any() else 0.0,
            "aAcc": float(tp.sum() / total) * 100 if total > 0 else 0.0,
            "mAcc": float(np.nanmean(acc.numpy())) * 100 if (truth > 0).any() else 0.0,
            "per_class_iou": [float(v) * 100 for v in iou.tolist()],
        }
