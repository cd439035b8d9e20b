"""GLPN (Kim et al., 2022): monocular depth from a PVT / MiT encoder with a light decoder of selective
feature fusion, as transformers' ``GLPNForDepthEstimation`` builds it (the paper's encoder: MiT-B4).

``model(images)``: ``(B, 3, H, W)`` float in [0, 1] (normalised inside with ImageNet statistics) ->
``(B, H, W)`` depth in ``(0, max_depth)`` metres. Any ``H, W`` the backbone accepts.

Decoder: from the deepest map up, each stage map goes through a 1x1 convolution to the decoder width (none
where it has that width already), is fused with the upsampled result so far by selective feature fusion
(conv3x3-BN-ReLU twice, a 2-channel conv3x3 and a sigmoid: per-pixel weights of the local and the global
map), and is upsampled x2; a last x2 upsampling brings stride 4 to full resolution, where the head (conv3x3,
ReLU, conv3x3 to one channel) gives ``sigmoid(x) * max_depth``. Where a side is not a multiple of 32 the
upsampling goes to the next map's size (then to the input's), so odd sizes work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import PVTBackbone, build_backbone
from .semantic_fpn import Segmenter

__all__ = ["GLPN", "GLPNDecoder", "SelectiveFeatureFusion", "glpn"]


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SelectiveFeatureFusion(nn.Module):
    """``(local, global) -> local * a + global * b`` with ``(a, b)`` a 2-channel sigmoid map of both."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels // 2)
        self.conv3 = nn.Conv2d(channels // 2, 2, 3, padding=1)

    def forward(self, local: Tensor, global_: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(torch.cat([local, global_], dim=1))))
        a = torch.sigmoid(self.conv3(F.relu(self.bn2(self.conv2(x)))))
        return local * a[:, :1] + global_ * a[:, 1:]


class _Stage(nn.Module):
    def __init__(self, in_channels: int, channels: int, fuse: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else nn.Identity()
        self.fusion = SelectiveFeatureFusion(channels) if fuse else None


class GLPNDecoder(nn.Module):
    """``[(B, C_i, H/4 * 2^-i, W/4 * 2^-i)] -> (B, channels, H/2, W/2)`` before the last x2 (see the module doc);
    ``stages[0]`` takes the deepest map."""

    def __init__(self, in_channels: Sequence[int], channels: int = 64):
        super().__init__()
        self.stages = nn.ModuleList(_Stage(c, channels, i > 0) for i, c in enumerate(reversed(list(in_channels))))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        maps = list(feats)[::-1]
        x = None
        for i, (stage, f) in enumerate(zip(self.stages, maps)):
            y = stage.proj(f)
            x = y if x is None else stage.fusion(y, x)
            nxt = maps[i + 1].shape[-2:] if i + 1 < len(maps) else [2 * s for s in x.shape[-2:]]
            x = _up(x, nxt)
        return x


class DepthHead(nn.Module):
    """conv3x3, ReLU, conv3x3 to one channel, ``sigmoid * max_depth``: ``(B, C, H, W) -> (B, H, W)``."""

    def __init__(self, channels: int, max_depth: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 1, 3, padding=1)
        self.max_depth = float(max_depth)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv2(F.relu(self.conv1(x))))[:, 0] * self.max_depth


class GLPN(Segmenter):
    """A PVT backbone's four maps + :class:`GLPNDecoder` + :class:`DepthHead`: ``(B, 3, H, W) -> (B, H, W)``."""

    task = "depth"

    def __init__(self, body: nn.Module, channels: int = 64, max_depth: float = 10.0):
        super().__init__(num_classes=1)
        self.backbone = PVTBackbone(body, levels=(0, 1, 2, 3))
        self.decoder = GLPNDecoder(self.backbone.channels, channels)
        self.head = DepthHead(channels, max_depth)
        self.max_depth = float(max_depth)

    def forward(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("expected images as a (B, 3, H, W) float tensor in [0, 1]")
        x = self.decoder(list(self.backbone((images - self.mean) / self.std).values()))
        return self.head(_up(x, images.shape[-2:]))


def glpn(
    backbone: str,
    num_classes: int = 1,
    pretrained: str | Path | None = None,
    drop_path_rate: float = 0.1,
    channels: int = 64,
    max_depth: float = 10.0,
) -> GLPN:
    """GLPN on a ``backbone`` PVT (``mit_b4`` is the paper's): decoder width ``channels``, depths in
    ``(0, max_depth)`` (10 m: NYU Depth v2's range). ``num_classes`` must be 1 (one depth channel)."""
    if num_classes != 1:
        raise ValueError(f"GLPN predicts one depth channel: num_classes must be 1, got {num_classes}")
    model = GLPN(build_backbone(backbone, pretrained, drop_path_rate), channels, max_depth)
    model.backbone_name = backbone
    return model
