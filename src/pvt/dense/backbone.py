"""PVT as a dense-prediction backbone: the four stage maps as an ordered dict, plus the FPN necks.

``PVTBackbone(x)``: ``(B, 3, H, W) -> {"c2": (B, C1, H/4, W/4), ..., "c5": (B, C4, H/32, W/32)}``
(v2 maps are ceil-sized: an odd side gives ``ceil(H / 4)`` and so on).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from ..base.constants import IMAGENET_MEAN, IMAGENET_STD
from ..models.model import PyramidVisionTransformer

__all__ = [
    "PVTBackbone",
    "PVTWithFPN",
    "P6P7FromC5",
    "P6P7FromP5",
    "build_backbone",
    "build_on_pvt",
    "detector_transform",
    "xavier_init_",
]

LEVEL_NAMES = ("c2", "c3", "c4", "c5")
D = TypeVar("D", bound=nn.Module)


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every convolution under ``module`` (the paper's
    initialisation of the layers a dense-prediction model adds to the pre-trained backbone)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_backbone(
    name: str,
    pretrained: str | Path | None = None,
    drop_path_rate: float = 0.1,
    **config_overrides,
) -> PyramidVisionTransformer:
    """A headless PVT (``num_classes=0``). ``pretrained`` may be any classification checkpoint the
    family loads (official, timm, HF or this library's format; its classifier is dropped) or a
    detection / segmentation checkpoint (official mmdetection / mmsegmentation releases, or a task
    model of this library): its backbone is taken and its neck and heads are dropped, with a note.

    ``drop_path_rate`` 0.1 is what the official detection and segmentation backbones use.
    """
    from ..models.registry import create_model

    return create_model(
        name, num_classes=0, pretrained=pretrained, drop_path_rate=drop_path_rate, **config_overrides
    )


def build_on_pvt(detector: Callable[..., D], backbone: str, num_classes: int, pretrained: str | Path | None,
                 drop_path_rate: float, *, levels: Sequence[int], extra: str | None, background: bool = False,
                 **kwargs: Any) -> D:
    """``detector(PVTWithFPN(<backbone>, levels, extra), num_classes, **kwargs)``: a detector on the named PVT
    (``pretrained``: any checkpoint :func:`build_backbone` loads), recording ``backbone_name`` and
    ``num_classes`` (object classes; ``background=True`` passes one more, for torchvision's two-stage
    detectors that count the background as class 0)."""
    neck = PVTWithFPN(build_backbone(backbone, pretrained, drop_path_rate), levels=levels, extra=extra)
    model = detector(neck, num_classes + 1 if background else num_classes, **kwargs)
    model.backbone_name = backbone
    model.num_classes = num_classes
    return model


def detector_transform(min_size: int | tuple[int, ...] = 800, max_size: int = 1333) -> GeneralizedRCNNTransform:
    """torchvision's detection input transform with ImageNet normalisation: the shorter side resized to
    ``min_size`` (a tuple: one drawn per training image), the longer kept at most ``max_size``."""
    return GeneralizedRCNNTransform(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))


class PVTBackbone(nn.Module):
    """The stage maps of a PVT as an ``OrderedDict`` (torchvision's backbone contract).

    Args:
        body: a :class:`PyramidVisionTransformer` (its head is not used).
        levels: which maps to return, indices into stages (0 = stride 4 ... 3 = stride 32).
    """

    def __init__(self, body: PyramidVisionTransformer, levels: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        self.body = body
        self.levels = tuple(levels)
        self.channels = [body.config.embed_dims[i] for i in self.levels]
        self.strides = [body.feature_info[i]["reduction"] for i in self.levels]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        maps = self.body.forward_pyramid(x)
        # contiguous copies: the token->map view is channels-last, convolutions are faster on NCHW
        return OrderedDict((LEVEL_NAMES[i], maps[i].contiguous()) for i in self.levels)


class P6P7FromC5(ExtraFPNBlock):
    """RetinaNet's two extra levels, as mmdet's ``add_extra_convs='on_input'``: P6 = conv3x3/2(C5),
    P7 = conv3x3/2(P6), no ReLU in between.

    (torchvision's ``LastLevelP6P7`` takes P6 from P5 whenever C5 has as many channels as the FPN,
    which happens for PVT v2-B0 with its 256-channel C5, and puts a ReLU before P7.)
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]):
        p6 = self.p6(x[-1])
        p7 = self.p7(p6)
        return results + [p6, p7], names + ["p6", "p7"]


class P6P7FromP5(P6P7FromC5):
    """ATSS's and GFL's two extra levels, as mmdet's ``add_extra_convs='on_output'`` with
    ``relu_before_extra_convs=False``: P6 = conv3x3/2(P5 *output*), P7 = conv3x3/2(P6), no ReLU between.

    ``P5 (B, C, h, w) -> P6 (B, C, ceil(h/2), ceil(w/2)), P7 (B, C, ceil(h/4), ceil(w/4))``; both convs
    take the FPN width in and out (``channels``), whatever C5 has.
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]):
        return super().forward(results, results, names)  # the FPN outputs in place of its inputs


class PVTWithFPN(nn.Module):
    """PVT backbone + torchvision FPN: ``(B, 3, H, W) -> OrderedDict`` of 256-channel maps.

    ``out_channels`` is set, as torchvision's detectors require. Output keys are ``"0", "1", ...``
    for the FPN levels, then the extra block's names (``"pool"`` or ``"p6", "p7"``).

    ``extra``: ``"p6p7"`` (P6/P7 from C5, RetinaNet), ``"p6p7_p5"`` (P6/P7 from the P5 output, ATSS
    and GFL), ``"pool"`` (a max-pooled P5, Mask R-CNN) or None.
    """

    def __init__(
        self,
        body: PyramidVisionTransformer,
        levels: Sequence[int],
        out_channels: int = 256,
        extra: str | None = None,
    ):
        super().__init__()
        self.body = PVTBackbone(body, levels)
        in_channels = self.body.channels
        extra_block: ExtraFPNBlock | None
        if extra == "p6p7":
            extra_block = P6P7FromC5(in_channels[-1], out_channels)
        elif extra == "p6p7_p5":
            extra_block = P6P7FromP5(out_channels)
        elif extra == "pool":
            extra_block = LastLevelMaxPool()
        elif extra is None:
            extra_block = None
        else:
            raise ValueError(f"extra must be 'p6p7', 'p6p7_p5', 'pool' or None, got {extra!r}")
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra_block)
        xavier_init_(self.fpn)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), v) for i, v in enumerate(feats.values())))
