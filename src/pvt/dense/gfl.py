"""GFL (Generalized Focal Loss) on a PVT backbone, as the PVT v2 paper's Table 4 builds it (the official
mmdet config, rebuilt on torchvision parts; no mmcv / mmdet).

GFL (Li et al., 2020) keeps ATSS's anchors and assignment (:mod:`pvt.dense.one_stage`) but

* the class output is a *joint* class-quality score: trained by Quality Focal Loss towards the IoU of
  the positive's predicted box at its class (0 elsewhere), used alone as the detection score (no
  centerness branch);
* each box side (left, top, right, bottom distance from the anchor centre, in strides) is a discrete
  distribution over ``0 .. reg_max`` (16): 4 x 17 outputs per location; its expectation is the distance,
  and Distribution Focal Loss sharpens it around the target.

Losses (the config's):

* ``loss_cls``: QFL (beta 2) over every valid anchor, divided by the number of positives;
* ``loss_bbox``: 2 x GIoU loss of the decoded positives, each weighted by its highest class probability
  (detached), divided by the sum of those weights (at least 1);
* ``loss_dfl``: 0.25 x DFL of the 4 sides of each positive with the same weights, divided by 4 and by the
  same sum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .assigners import box_centers
from .backbone import PVTWithFPN, build_on_pvt
from .losses import (
    box_to_distances,
    distances_to_box,
    distribution_expectation,
    distribution_focal_loss,
    paired_iou,
    quality_focal_loss,
)
from .one_stage import ONE_STAGE_NECK, OneStageDetector, OneStageHead, reduce_mean

__all__ = ["GFL", "gfl"]


class GFL(OneStageDetector):
    """GFL over ``PVTWithFPN(C3, C4, C5 -> 256) + P6/P7 from P5`` (see the module docstring).

    Head outputs per level: ``num_classes`` joint class-quality logits and ``4 x (reg_max + 1)``
    distribution logits per location.
    """

    qfl_beta = 2.0
    bbox_weight, dfl_weight = 2.0, 0.25
    """The GIoU and DFL loss weights of the config."""

    def __init__(self, backbone: PVTWithFPN, num_classes: int, reg_max: int = 16, **kwargs):
        head = OneStageHead(backbone.out_channels, num_classes, 4 * (reg_max + 1))
        super().__init__(backbone, head, num_classes, **kwargs)
        self.reg_max = reg_max

    def head_losses(self, cls: Tensor, box: Tensor, ctr: Tensor | None, *, anchors: Tensor, strides: Tensor,
                    valid: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        pos = valid & (gt_labels < self.num_classes)
        num_pos = reduce_mean(pos.sum().float()).clamp(min=1.0)
        quality = torch.zeros(gt_labels.shape, dtype=torch.float32, device=cls.device)

        if bool(pos.any()):
            stride = strides.expand(pos.shape[0], -1)[pos][:, None]
            centers = box_centers(anchors.expand(pos.shape[0], -1, -1)[pos]) / stride  # in strides
            target = gt_boxes[pos] / stride
            logits = box[pos].float()
            pred = distances_to_box(centers, distribution_expectation(logits, self.reg_max))
            weight = cls.detach()[pos].float().sigmoid().amax(dim=1)
            quality[pos] = paired_iou(pred.detach(), target)
            giou = generalized_box_iou_loss(pred, target, reduction="none")
            sides = box_to_distances(centers, target, self.reg_max - 0.1).reshape(-1)
            dfl = distribution_focal_loss(logits.reshape(-1, self.reg_max + 1), sides).reshape(-1, 4).mean(dim=1)
            weight_sum = reduce_mean(weight.sum()).clamp(min=1.0)
            loss_bbox = self.bbox_weight * (giou * weight).sum() / weight_sum
            loss_dfl = self.dfl_weight * (dfl * weight).sum() / weight_sum
        else:  # no positive in the batch (e.g. images without objects): zero, with gradients
            loss_bbox = loss_dfl = box.sum() * 0 + 0.0  # (+ 0.0: no "-0.0" in the logs)

        qfl = quality_focal_loss(cls[valid].float(), gt_labels[valid], quality[valid], self.qfl_beta)
        loss_cls = qfl.sum() / num_pos
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}

    def level_scores(self, cls: Tensor, ctr: Tensor | None) -> tuple[Tensor, Tensor]:
        scores = cls.sigmoid()
        return scores, scores.amax(dim=1)

    def decode_boxes(self, box: Tensor, anchors: Tensor, stride: int) -> Tensor:
        return distances_to_box(box_centers(anchors), distribution_expectation(box, self.reg_max) * stride)


def gfl(backbone: str, num_classes: int = 80, pretrained: str | Path | None = None, drop_path_rate: float = 0.1,
        reg_max: int = 16, **kwargs: Any) -> GFL:
    """GFL with a ``backbone`` PVT (e.g. ``"pvt_v2_b2"``) and ``num_classes`` object classes; ``reg_max`` is
    the largest distance in strides (the paper's 16).

    Other arguments as :func:`pvt.dense.atss.atss`; ``anchor_size`` only moves the assignment here (GFL
    regresses distances from anchor centres)."""
    return build_on_pvt(GFL, backbone, num_classes, pretrained, drop_path_rate, **ONE_STAGE_NECK, reg_max=reg_max,
                        **kwargs)
