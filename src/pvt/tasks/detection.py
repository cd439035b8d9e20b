"""RetinaNet and Mask R-CNN on a PVT backbone, as the paper's Table 3 builds them (torchvision heads).

Both models follow torchvision's detection contract: ``model(images, targets)`` in training returns a
dict of losses; in eval mode ``model(images)`` returns one dict per image with ``boxes`` (x1, y1, x2, y2
in input pixels), ``scores``, ``labels`` and, for Mask R-CNN, ``masks`` ``(N, 1, H, W)`` in [0, 1].
``images`` is a list of ``(3, H, W)`` float tensors in [0, 1] of any sizes; the models resize them
(shorter side ``min_size``, longer at most ``max_size``), normalise with ImageNet statistics and pad
to multiples of 32.

Labels are contiguous class indices ``0 .. num_classes - 1`` for both models (Mask R-CNN's background
slot is added and removed inside).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from .backbone import PVTWithFPN, build_backbone

__all__ = ["PVTRetinaNet", "PVTMaskRCNN", "retinanet", "maskrcnn", "retinanet_anchors", "rpn_anchors",
           "DEFAULT_ANCHOR_SIZE", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


#: the paper's (mmdet's) smallest anchor, on the stride-8 level; each coarser level doubles it.
DEFAULT_ANCHOR_SIZE = 32


def _check_anchor_size(anchor_size: int) -> int:
    if isinstance(anchor_size, bool) or not isinstance(anchor_size, int) or not 4 <= anchor_size <= 1024:
        raise ValueError(f"anchor_size={anchor_size!r}: expected an integer number of pixels in 4..1024 "
                         f"(the smallest anchor, on the stride-8 level; default {DEFAULT_ANCHOR_SIZE})")
    return anchor_size


def level_anchor_sizes(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> tuple[int, ...]:
    """The base anchor of each of the five levels: ``anchor_size`` x 1, 2, 4, 8, 16 (32..512 by default)."""
    base = _check_anchor_size(anchor_size)
    return tuple(base * 2**i for i in range(5))


def retinanet_anchors(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> AnchorGenerator:
    """9 anchors per location: one base size per level P3..P7 (32..512 by default; ``anchor_size`` is
    the smallest) x octave scales 2^0, 2^(1/3), 2^(2/3), aspect ratios 0.5, 1, 2."""
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in level_anchor_sizes(anchor_size))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def rpn_anchors(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> AnchorGenerator:
    """Mask R-CNN's RPN anchors: 3 per location, one size per level P2..P6 (32..512 by default, as
    torchvision and mmdet; ``anchor_size`` is the smallest) x aspect ratios 0.5, 1, 2."""
    sizes = tuple((s,) for s in level_anchor_sizes(anchor_size))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class PVTRetinaNet(RetinaNet):
    """torchvision RetinaNet over ``PVTWithFPN(C3, C4, C5 -> 256) + P6/P7 from C5``.

    FLOPs: feed ``model.forward_dummy`` a ``(1, 3, H, W)`` tensor (backbone, FPN and head, no
    pre-processing or box decoding, as mmdet's ``forward_dummy``).
    """

    task = "detection"

    def forward_dummy(self, x: Tensor):
        feats = list(self.backbone(x).values())
        return self.head(feats)


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


def retinanet(
    backbone: str,
    num_classes: int = 80,
    pretrained: str | Path | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    drop_path_rate: float = 0.1,
    score_thresh: float = 0.05,
    detections_per_img: int = 100,
    anchor_size: int = DEFAULT_ANCHOR_SIZE,
) -> PVTRetinaNet:
    """RetinaNet with a ``backbone`` PVT (e.g. ``"pvt_v2_b0"``), ``num_classes`` object classes.

    ``anchor_size``: the smallest anchor in pixels (P3; the paper's 32, doubling up to 512 on P7). Small
    objects need smaller anchors (the built-in shapes use 16); it changes no parameter."""
    anchors = retinanet_anchors(anchor_size)
    body = build_backbone(backbone, pretrained, drop_path_rate)
    neck = PVTWithFPN(body, levels=(1, 2, 3), extra="p6p7")
    model = PVTRetinaNet(
        neck,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        anchor_generator=anchors,
        score_thresh=score_thresh,
        detections_per_img=detections_per_img,
    )
    model.backbone_name = backbone
    model.num_classes = num_classes
    return model


def maskrcnn(
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
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img,
        rpn_anchor_generator=anchors,
    )
    model.backbone_name = backbone
    model.num_classes = num_classes
    return model
