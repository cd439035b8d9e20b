"""RetinaNet on a PVT backbone, as the paper's Table 3 builds it (torchvision's detector).

torchvision's detection contract: in training ``model(images, targets)`` returns a dict of losses; in
eval mode ``model(images)`` returns one dict per image with ``boxes`` (x1, y1, x2, y2 in input pixels),
``scores`` and ``labels`` (contiguous class indices ``0 .. num_classes - 1``). ``images`` is a list of
``(3, H, W)`` float tensors in [0, 1] of any sizes; the model resizes them (shorter side ``min_size``,
longer at most ``max_size``), normalises with ImageNet statistics and pads to multiples of 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision.models.detection import RetinaNet

from ..base.constants import IMAGENET_MEAN, IMAGENET_STD
from .anchors import DEFAULT_ANCHOR_SIZE, retinanet_anchors
from .backbone import build_on_pvt

__all__ = ["PVTRetinaNet", "retinanet"]


class PVTRetinaNet(RetinaNet):
    """torchvision RetinaNet over ``PVTWithFPN(C3, C4, C5 -> 256) + P6/P7 from C5``.

    FLOPs: feed ``model.forward_dummy`` a ``(1, 3, H, W)`` tensor (backbone, FPN and head, no
    pre-processing or box decoding, as mmdet's ``forward_dummy``).
    """

    task = "detection"

    def forward_dummy(self, x: Tensor):
        feats = list(self.backbone(x).values())
        return self.head(feats)


def retinanet(backbone: str, num_classes: int = 80, pretrained: str | Path | None = None, drop_path_rate: float = 0.1,
              anchor_size: int = DEFAULT_ANCHOR_SIZE, detections_per_img: int = 100, **kwargs: Any) -> PVTRetinaNet:
    """RetinaNet with a ``backbone`` PVT (e.g. ``"pvt_v2_b0"``), ``num_classes`` object classes.

    ``anchor_size``: the smallest anchor in pixels (P3; the paper's 32, doubling up to 512 on P7). Small
    objects need smaller anchors (the built-in shapes use 16); it changes no parameter.
    ``detections_per_img``: mmdet's 100 (torchvision's default is 300). Other keyword arguments go to
    torchvision's ``RetinaNet`` (``min_size`` 800, ``max_size`` 1333, ``score_thresh`` 0.05, ...)."""
    return build_on_pvt(PVTRetinaNet, backbone, num_classes, pretrained, drop_path_rate, levels=(1, 2, 3),
                        extra="p6p7", anchor_generator=retinanet_anchors(anchor_size), image_mean=list(IMAGENET_MEAN),
                        image_std=list(IMAGENET_STD), detections_per_img=detections_per_img, **kwargs)
