"""Semantic FPN (Kirillov et al., 2019) on a PVT backbone, as mmsegmentation's PVT config builds it.

``model(images)``: ``(B, 3, H, W)`` float in [0, 1] (normalised inside with ImageNet statistics)
-> ``(B, num_classes, H, W)`` logits. Any ``H, W`` the backbone accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base.constants import IMAGENET_MEAN, IMAGENET_STD
from .backbone import PVTWithFPN, build_backbone

__all__ = ["Segmenter", "SemanticFPN", "SemanticFPNHead", "semantic_fpn"]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SemanticFPNHead(nn.Module):
    """Per FPN level ``i`` (stride ``4 * 2^i``), ``max(1, i)`` conv3x3-BN-ReLU blocks to ``channels``,
    each followed (for ``i > 0``) by a 2x bilinear ``nn.Upsample``; the stride-4 maps are summed, then
    Dropout2d and a 1x1 classifier.

    ``[(B, C_in, H/4 * 2^-i, W/4 * 2^-i)] -> (B, num_classes, H/4, W/4)``.
    """

    def __init__(self, in_channels: int = 256, channels: int = 128, num_classes: int = 150, num_levels: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        scale_heads = []
        for i in range(num_levels):
            layers: list[nn.Module] = []
            for k in range(max(1, i)):
                layers.append(_conv_bn_relu(in_channels if k == 0 else channels, channels))
                if i > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            scale_heads.append(nn.Sequential(*layers))
        self.scale_heads = nn.ModuleList(scale_heads)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        out = self.scale_heads[0](feats[0])
        for head, x in zip(self.scale_heads[1:], feats[1:]):
            y = head(x)
            if y.shape[-2:] != out.shape[-2:]:  # odd input sizes: ceil-sized maps upsample past stride 4
                y = F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + y
        return self.classifier(self.dropout(out))


class Segmenter(nn.Module):
    """What every segmenter here shares: ``backbone`` (images -> dict of maps) and ``head`` (list of maps ->
    logits at stride 4), set by the subclass; ImageNet normalisation inside; logits resized to the input."""

    task = "segmentation"

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("expected images as a (B, 3, H, W) float tensor in [0, 1]")
        x = (images - self.mean) / self.std
        logits = self.head(list(self.backbone(x).values()))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class SemanticFPN(Segmenter):
    """PVT + FPN(C2..C5 -> 256) + :class:`SemanticFPNHead`, logits upsampled to the input size.

    FLOPs: feed the whole model a ``(1, 3, 512, 512)`` tensor (Table 5's convention); the final
    resize to the input is a functional interpolate, not counted, as in mmsegmentation.
    """

    def __init__(self, body: nn.Module, num_classes: int = 150, fpn_channels: int = 256, head_channels: int = 128):
        super().__init__(num_classes)
        self.backbone = PVTWithFPN(body, levels=(0, 1, 2, 3), out_channels=fpn_channels, extra=None)
        self.head = SemanticFPNHead(fpn_channels, head_channels, num_classes)


def semantic_fpn(
    backbone: str,
    num_classes: int = 150,
    pretrained: str | Path | None = None,
    drop_path_rate: float = 0.1,
) -> SemanticFPN:
    """Semantic FPN with a ``backbone`` PVT and ``num_classes`` classes."""
    model = SemanticFPN(build_backbone(backbone, pretrained, drop_path_rate), num_classes)
    model.backbone_name = backbone
    return model
