"""Training-sample assignment of the one-stage detectors: ATSS (Zhang et al., 2020), used by ATSS and GFL.

Adaptive Training Sample Selection picks positives per ground-truth box from statistics of the anchors
near it instead of a fixed IoU threshold:

1. on every pyramid level, the ``topk`` anchors whose centres are closest to the box centre are
   candidates (``min(topk, anchors on the level)`` per level);
2. the box's IoU threshold is the mean plus the (unbiased) standard deviation of the candidates' IoUs;
3. a candidate is positive when its IoU reaches the threshold and its centre lies inside the box
   (more than 0.01 px from every side);
4. an anchor positive for several boxes goes to the one it overlaps most.

Every other anchor is negative. This is the rule of mmdet's ``ATSSAssigner`` (no ignored boxes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["atss_assign", "box_centers"]


def box_centers(boxes: Tensor) -> Tensor:
    """``(N, 4)`` x1, y1, x2, y2 boxes -> ``(N, 2)`` centres (x, y)."""
    return torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2), dim=1)


@torch.no_grad()
def atss_assign(anchors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """The ground-truth box each anchor is assigned to, by ATSS (see the module docstring).

    Args:
        anchors: ``(A, 4)`` anchor boxes (x1, y1, x2, y2), all levels concatenated, finest first.
        num_per_level: anchors on each level (summing to ``A``), in the order of ``anchors``.
        gt_boxes: ``(G, 4)`` ground-truth boxes (x1, y1, x2, y2); ``G`` may be 0.
        topk: candidates per level and per box (the paper's 9).

    Returns:
        ``(A,)`` int64: the index of the assigned box in ``gt_boxes``, or -1 for a negative (every anchor
        when there is no box).
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_per_level) != num_anchors:
        raise ValueError(f"num_per_level sums to {sum(num_per_level)}, but there are {num_anchors} anchors")
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return assigned

    ious = box_iou(anchors, gt_boxes)  # (A, G)
    anchor_ctr, gt_ctr = box_centers(anchors), box_centers(gt_boxes)
    distances = torch.cdist(anchor_ctr, gt_ctr)  # (A, G)

    candidates, start = [], 0
    for n in num_per_level:
        if n > 0:
            k = min(topk, n)
            candidates.append(distances[start:start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    cand = torch.cat(candidates)  # (K, G): anchor indices, K = sum over levels of min(topk, n)

    cand_ious = ious.gather(0, cand)  # (K, G)
    # a single candidate has no spread: its std (NaN) counts as 0
    threshold = cand_ious.mean(0) + cand_ious.std(0).nan_to_num(0.0)
    is_pos = cand_ious >= threshold[None]

    # the candidate's centre strictly inside the box
    cx, cy = anchor_ctr[cand, 0], anchor_ctr[cand, 1]  # (K, G)
    inside = torch.stack((cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy))
    is_pos &= inside.amin(0) > 0.01

    # among the boxes an anchor is positive for, the one it overlaps most
    masked = torch.full_like(ious, -1.0)
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(cand)
    masked[cand[is_pos], gt_index[is_pos]] = ious[cand[is_pos], gt_index[is_pos]]
    best, best_gt = masked.max(dim=1)
    positive = best >= 0
    assigned[positive] = best_gt[positive]
    return assigned
