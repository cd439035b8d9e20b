"""ATSS on a PVT backbone, as the PVT v2 paper's Table 4 builds it (the official mmdet config, rebuilt on
torchvision parts; no mmcv / mmdet).

ATSS (Zhang et al., 2020): one anchor per location, positives by Adaptive Training Sample Selection
(:mod:`pvt.dense.assigners`), and a centerness branch on the regression tower. The box outputs are
deltas (dx, dy, dw, dh) of the anchor, with the variances 0.1, 0.1, 0.2, 0.2 of mmdet's
``DeltaXYWHBBoxCoder`` (torchvision's ``BoxCoder`` with weights 10, 10, 5, 5).

Losses (the config's):

* ``loss_cls``: sigmoid focal loss (alpha 0.25, gamma 2) over every valid anchor and class, divided by
  the number of positives;
* ``loss_bbox``: 2 x GIoU loss of the decoded positives, each weighted by its centerness target, divided
  by the sum of those targets;
* ``loss_centerness``: binary cross-entropy of the centerness logit against its target, divided by the
  number of positives.

At test time a candidate's score is its class probability times its centerness. The shared neck, head,
anchors, contract and inference are :mod:`pvt.dense.one_stage`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .assigners import box_centers
from .backbone import PVTWithFPN, build_on_pvt
from .losses import centerness_target
from .one_stage import ONE_STAGE_NECK, OneStageDetector, OneStageHead, reduce_mean

__all__ = ["ATSS", "atss"]


class ATSS(OneStageDetector):
    """ATSS over ``PVTWithFPN(C3, C4, C5 -> 256) + P6/P7 from P5`` (see the module docstring).

    Head outputs per level: ``num_classes`` logits, 4 deltas and 1 centerness logit per location.
    """

    focal_alpha, focal_gamma = 0.25, 2.0
    bbox_weight = 2.0
    """The GIoU loss weight of the config."""

    def __init__(self, backbone: PVTWithFPN, num_classes: int, **kwargs):
        head = OneStageHead(backbone.out_channels, num_classes, 4, centerness=True)
        super().__init__(backbone, head, num_classes, **kwargs)
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))

    def head_losses(self, cls: Tensor, box: Tensor, ctr: Tensor | None, *, anchors: Tensor, strides: Tensor,
                    valid: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        assert ctr is not None
        pos = valid & (gt_labels < self.num_classes)
        num_pos = reduce_mean(pos.sum().float()).clamp(min=1.0)

        targets = F.one_hot(gt_labels[valid], self.num_classes + 1)[:, : self.num_classes].to(cls.dtype)
        loss_cls = sigmoid_focal_loss(cls[valid].float(), targets, self.focal_alpha, self.focal_gamma, "sum") / num_pos

        if not bool(pos.any()):  # no positive in the batch (e.g. images without objects): zero, with gradients
            zero = box.sum() * 0 + ctr.sum() * 0 + 0.0  # (+ 0.0: no "-0.0" in the logs)
            return {"loss_cls": loss_cls, "loss_bbox": zero, "loss_centerness": zero}
        pos_anchors = anchors.expand(pos.shape[0], -1, -1)[pos]
        pos_gt = gt_boxes[pos]
        ctr_target = centerness_target(box_centers(pos_anchors), pos_gt)
        pred = self.box_coder.decode_single(box[pos], pos_anchors)
        giou = generalized_box_iou_loss(pred, pos_gt, reduction="none")
        ctr_sum = reduce_mean(ctr_target.sum()).clamp(min=1.0)
        loss_bbox = self.bbox_weight * (giou * ctr_target).sum() / ctr_sum
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos][:, 0].float(), ctr_target, reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}

    def level_scores(self, cls: Tensor, ctr: Tensor | None) -> tuple[Tensor, Tensor]:
        assert ctr is not None
        scores = cls.sigmoid() * ctr.sigmoid()
        return scores, scores.amax(dim=1)

    def decode_boxes(self, box: Tensor, anchors: Tensor, stride: int) -> Tensor:
        return self.box_coder.decode_single(box, anchors)


def atss(backbone: str, num_classes: int = 80, pretrained: str | Path | None = None, drop_path_rate: float = 0.1,
         **kwargs: Any) -> ATSS:
    """ATSS with a ``backbone`` PVT (e.g. ``"pvt_v2_b2"``) and ``num_classes`` object classes.

    ``pretrained``: a checkpoint for the backbone (any the family loads; heads dropped). Other keyword
    arguments (``min_size``, ``max_size``, ``anchor_size``, ``score_thresh``, ``detections_per_img``, ...)
    go to :class:`~pvt.dense.one_stage.OneStageDetector`."""
    return build_on_pvt(ATSS, backbone, num_classes, pretrained, drop_path_rate, **ONE_STAGE_NECK, **kwargs)
