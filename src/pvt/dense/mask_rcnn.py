"""Mask R-CNN on a PVT backbone, as the paper's Table 3 builds it (torchvision's detector).

Same contract as :mod:`pvt.dense.retinanet`, plus ``masks`` ``(N, 1, H, W)`` in [0, 1] per image in
eval mode. Labels are contiguous class indices ``0 .. num_classes - 1``: torchvision's background slot
is added and removed inside.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from torchvision.models.detection import MaskRCNN

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .anchors import DEFAULT_ANCHOR_SIZE, rpn_anchors
from .backbone import PVTWithFPN, build_backbone

__all__ = ["PVTMaskRCNN", "mask_rcnn"]


class PVTMaskRCNN(MaskRCNN):
    """torchvision Mask R-CNN over ``PVTWithFPN(C2..C5 -> 256) + max-pool level``.

    ``num_classes`` foreground classes; torchvision's internal count includes background, so labels
    are shifted by one on the way in and out.

    FLOPs: feed ``model.forward_dummy`` a ``(1, 3, H, W)`` tensor (backbone, FPN and RPN head).
    """

    task = "instance"

    def forward(self, images, targets=None):
        if targets is not None:
            targets = [dict(t, labels=t["labels"] + 1) for t in targets]
        out = super().forward(images, targets)
        if isinstance(out, list):
            for det in out:
                det["labels"] = det["labels"] - 1
        return out

    def forward_dummy(self, x: Tensor):
        feats = list(self.backbone(x).values())
        return self.rpn.head(feats)


def mask_rcnn(
    backbone: str,
    num_classes: int = 80,
    pretrained: str | Path | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    drop_path_rate: float = 0.1,
    box_score_thresh: float = 0.05,
    box_detections_per_img: int = 100,
    anchor_size: int = DEFAULT_ANCHOR_SIZE,
) -> PVTMaskRCNN:
    """Mask R-CNN with a ``backbone`` PVT and ``num_classes`` object classes (background not counted).

    ``anchor_size``: the RPN's smallest anchor in pixels (P2; 32 as torchvision and mmdet, doubling
    up to 512); it changes no parameter."""
    anchors = rpn_anchors(anchor_size)
    body = build_backbone(backbone, pretrained, drop_path_rate)
    neck = PVTWithFPN(body, levels=(0, 1, 2, 3), extra="pool")
    model = PVTMaskRCNN(
        neck,
        num_classes + 1,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img,
        rpn_anchor_generator=anchors,
    )
    model.backbone_name = backbone
    model.num_classes = num_classes
    return model
