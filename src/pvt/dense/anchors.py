"""Anchor layouts of the anchor-based detectors: one base size per pyramid level, doubling per level.

The paper's (mmdetection's) smallest anchor is 32 px on the first level it detects on; small objects
(the built-in shapes) need smaller ones, so ``anchor_size`` is an option that changes no parameter.
"""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator

__all__ = ["DEFAULT_ANCHOR_SIZE", "check_anchor_size", "level_anchor_sizes", "retinanet_anchors", "rpn_anchors"]


#: the paper's (mmdet's) smallest anchor, on the stride-8 level; each coarser level doubles it.
DEFAULT_ANCHOR_SIZE = 32


def check_anchor_size(anchor_size: int) -> int:
    """``anchor_size`` when it is a whole number of pixels in 4..1024, else a ValueError saying so."""
    if isinstance(anchor_size, bool) or not isinstance(anchor_size, int) or not 4 <= anchor_size <= 1024:
        raise ValueError(f"anchor_size={anchor_size!r}: expected an integer number of pixels in 4..1024 "
                         f"(the smallest anchor, on the stride-8 level; default {DEFAULT_ANCHOR_SIZE})")
    return anchor_size


def level_anchor_sizes(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> tuple[int, ...]:
    """The base anchor of each of the five levels: ``anchor_size`` x 1, 2, 4, 8, 16 (32..512 by default)."""
    base = check_anchor_size(anchor_size)
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
