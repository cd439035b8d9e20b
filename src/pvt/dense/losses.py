"""Losses and targets of the one-stage detectors that torchvision has no version of.

* :func:`quality_focal_loss` (GFL, Li et al., 2020): a sigmoid focal loss towards a *soft* target: the
  IoU of the predicted box at a positive's class, 0 elsewhere; the modulating factor is
  ``|target - sigmoid(logit)| ** beta``.
* :func:`distribution_focal_loss` (GFL): a box side as a discrete distribution over ``0 .. reg_max``;
  the target distance ``y`` between bins ``i <= y < i + 1`` pulls bins ``i`` and ``i + 1`` with
  weights ``i + 1 - y`` and ``y - i``.
* :func:`distribution_expectation`: the distance such a distribution predicts (GFL's "integral").
* :func:`centerness_target` (FCOS / ATSS): how central a point lies in its box, in [0, 1].

(Sigmoid focal loss and the GIoU loss come from ``torchvision.ops``.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["quality_focal_loss", "distribution_focal_loss", "distribution_expectation", "centerness_target",
           "box_to_distances", "distances_to_box", "paired_iou"]


def quality_focal_loss(logits: Tensor, labels: Tensor, quality: Tensor, beta: float = 2.0) -> Tensor:
    """Quality Focal Loss per sample, summed over classes.

    Args:
        logits: ``(N, C)`` class logits (the joint class-quality score before the sigmoid).
        labels: ``(N,)`` int64: the class of a positive in ``0 .. C-1``; anything else (e.g. ``C`` or
            -1) is a negative, whose target is 0 for every class.
        quality: ``(N,)`` the soft target of a positive at its class (the IoU of its predicted box with
            its ground truth); ignored for negatives.
        beta: the focusing exponent (the paper's 2).

    Returns:
        ``(N,)``: ``sum_c BCE(logit_c, target_c) * |target_c - sigmoid(logit_c)| ** beta``.
    """
    num_classes = logits.shape[1]
    prob = logits.sigmoid()
    pos = (labels >= 0) & (labels < num_classes)
    target = torch.zeros_like(logits)
    rows = pos.nonzero().squeeze(1)
    target[rows, labels[rows]] = quality[rows].to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (target - prob).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss per sample.

    Args:
        logits: ``(M, n + 1)`` logits over the bins ``0 .. n``.
        target: ``(M,)`` distances in ``[0, n)`` (in bins; callers keep them below ``n``, e.g. at
            ``n - 0.1``, so that the right bin exists).

    Returns:
        ``(M,)``: ``CE(logits, i) * (i + 1 - y) + CE(logits, i + 1) * (y - i)`` with ``i = floor(y)``.
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, right, reduction="none") * w_right)


def distribution_expectation(logits: Tensor, reg_max: int) -> Tensor:
    """``(..., 4 * (reg_max + 1))`` logits -> ``(..., 4)`` expected distances (softmax over each side's
    ``reg_max + 1`` bins, dotted with ``0 .. reg_max``), in bins (multiply by the stride for pixels)."""
    bins = torch.arange(reg_max + 1, dtype=logits.dtype, device=logits.device)
    prob = logits.unflatten(-1, (4, reg_max + 1)).softmax(dim=-1)
    return prob @ bins


def box_to_distances(points: Tensor, boxes: Tensor, max_distance: float | None = None) -> Tensor:
    """``(N, 2)`` points and ``(N, 4)`` boxes -> ``(N, 4)`` distances left, top, right, bottom from each
    point to its box's sides, clamped to ``[0, max_distance]`` when given."""
    d = torch.stack((points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1],
                     boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]), dim=1)
    return d.clamp(min=0, max=max_distance) if max_distance is not None else d


def distances_to_box(points: Tensor, distances: Tensor) -> Tensor:
    """``(N, 2)`` points and ``(N, 4)`` distances left, top, right, bottom -> ``(N, 4)`` boxes."""
    return torch.cat((points - distances[:, :2], points + distances[:, 2:]), dim=1)


def paired_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """``(N, 4)`` and ``(N, 4)`` boxes -> ``(N,)`` IoU of each pair (``box_iou`` without the ``N x N``)."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter).clamp(min=eps)


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    """``(N, 2)`` points inside their ``(N, 4)`` boxes -> ``(N,)`` centerness
    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``: 1 at the centre, 0 on a side.

    The points must lie strictly inside (the ATSS positives do); elsewhere the value is undefined."""
    d = box_to_distances(points, boxes)
    lr, tb = d[:, 0::2], d[:, 1::2]
    return torch.sqrt((lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1)))
