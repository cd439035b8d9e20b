"""Mask R-CNN on a PVT backbone, as the paper's Table 3 builds it (torchvision's detector).

Same contract as :mod:`pvt.dense.retinanet`, plus ``masks`` ``(N, 1, H, W)`` in [0, 1] per image in
eval mode. Labels are contiguous class indices ``0 .. num_classes - 1``: torchvision's background slot
is added and removed inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision.models.detection import MaskRCNN

from ..base.constants import IMAGENET_MEAN, IMAGENET_STD
from .anchors import DEFAULT_ANCHOR_SIZE, rpn_anchors
from .backbone import build_on_pvt

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


def mask_rcnn(backbone: str, num_classes: int = 80, pretrained: str | Path | None = None, drop_path_rate: float = 0.1,
              anchor_size: int = DEFAULT_ANCHOR_SIZE, **kwargs: Any) -> PVTMaskRCNN:
    """Mask R-CNN with a ``backbone`` PVT and ``num_classes`` object classes (background not counted).

    ``anchor_size``: the RPN's smallest anchor in pixels (P2; 32 as torchvision and mmdet, doubling
    up to 512); it changes no parameter. Other keyword arguments go to torchvision's ``MaskRCNN``
    (``min_size`` 800, ``max_size`` 1333, ``box_score_thresh`` 0.05, ``box_detections_per_img`` 100, ...)."""
    return build_on_pvt(PVTMaskRCNN, backbone, num_classes, pretrained, drop_path_rate, levels=(0, 1, 2, 3),
                        extra="pool", background=True, rpn_anchor_generator=rpn_anchors(anchor_size),
                        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), **kwargs)
