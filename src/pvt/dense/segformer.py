"""SegFormer (Xie et al., 2021): the All-MLP decode head on any PVT backbone (MiT-B0..B5 are the paper's).

``model(images)``: ``(B, 3, H, W)`` float in [0, 1] (normalised inside with ImageNet statistics)
-> ``(B, num_classes, H, W)`` logits. Any ``H, W`` the backbone accepts.

The head, as the official code and transformers' ``SegformerDecodeHead`` build it: every stage map goes
through its own linear layer to the decoder width, is resized (bilinear) to the stride-4 map, the four are
concatenated deepest first, fused by a 1x1 convolution without bias, BatchNorm and ReLU, then dropout
(0.1) and a 1x1 classifier. The decoder is 256 wide on the light encoders (two blocks per stage: B0, B1)
and 768 on the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import PVTBackbone, build_backbone
from .semantic_fpn import Segmenter

__all__ = ["SegFormer", "SegFormerHead", "segformer", "decoder_width"]


def decoder_width(depths: Sequence[int]) -> int:
    """SegFormer's decoder width for an encoder with ``depths``: 256 with two blocks per stage (B0, B1), else 768."""
    return 256 if sum(depths) <= 2 * len(depths) else 768


class SegFormerHead(nn.Module):
    """``[(B, C_i, H/4 * 2^-i, W/4 * 2^-i)] -> (B, num_classes, H/4, W/4)`` (see the module doc).

    ``linear_c[i]``: stage ``i``'s projection; ``linear_fuse`` + ``bn``: the fusion; ``classifier``."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256, num_classes: int = 150, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, channels) for c in in_channels)
        self.linear_fuse = nn.Conv2d(channels * len(in_channels), channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        outs = []
        for proj, x in zip(self.linear_c, feats):
            b, _, h, w = x.shape
            y = proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        x = F.relu(self.bn(self.linear_fuse(torch.cat(outs[::-1], dim=1))))  # deepest first, as the official code
        return self.classifier(self.dropout(x))


class SegFormer(Segmenter):
    """A PVT backbone's four maps + :class:`SegFormerHead`, logits upsampled to the input size.

    FLOPs: feed the whole model a ``(1, 3, 512, 512)`` tensor, the SegFormer paper's convention (mmcv's
    counter: the final resize to the input is not counted)."""

    lr_scales = {"head.": 10.0}
    """The official recipe's learning-rate factor of the decode head (``lr_mult=10``), read by the trainer."""

    def __init__(self, body: nn.Module, num_classes: int = 150, channels: int | None = None):
        super().__init__(num_classes)
        self.backbone = PVTBackbone(body, levels=(0, 1, 2, 3))
        self.head = SegFormerHead(self.backbone.channels, channels or decoder_width(body.config.depths), num_classes)


def segformer(
    backbone: str,
    num_classes: int = 150,
    pretrained: str | Path | None = None,
    drop_path_rate: float = 0.1,
    channels: int | None = None,
) -> SegFormer:
    """SegFormer with a ``backbone`` PVT (``mit_b0``...``mit_b5`` are the paper's) and ``num_classes`` classes;
    ``channels``: the decoder width (default :func:`decoder_width`)."""
    model = SegFormer(build_backbone(backbone, pretrained, drop_path_rate), num_classes, channels)
    model.backbone_name = backbone
    return model
