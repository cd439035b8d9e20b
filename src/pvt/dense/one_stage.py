"""What ATSS and GFL share: the neck, the head's structure, one anchor per location, ATSS assignment,
and the torchvision detection contract around them.

* Neck: ``PVTWithFPN(C3, C4, C5 -> 256)`` + P6/P7 from the P5 output (mmdet's
  ``add_extra_convs='on_output'``, no ReLU before P7): five levels at strides 8 .. 128.
* Head (:class:`OneStageHead`): per level, a classification tower and a regression tower of 4 x
  (3x3 conv without bias, GroupNorm(32), ReLU) at 256 channels, shared over the levels; a 3x3 conv to
  the class logits on the first, a 3x3 conv to the box outputs (and to centerness, for ATSS) on the
  second; the box outputs of each level times a learnable scalar. Convolutions N(0, 0.01), the class
  bias at prior probability 0.01 (mmdet's init of both heads).
* Anchors (:func:`grid_anchors`): one square anchor per location, centred on ``(j * s, i * s)``, side
  8 x stride by default (64 px on P3 up to 1024 on P7); ``anchor_size`` sets the P3 side.
* Training (:meth:`OneStageDetector.forward` with targets): anchors over the padding of each image's
  own 32-multiple are left out; the rest are assigned by :func:`~pvt.dense.assigners.atss_assign`; the
  subclass turns the assignment into losses (:meth:`OneStageDetector.head_losses`).
* Inference: per level, the 1000 anchors with the best score are decoded, candidates over 0.05 kept,
  class-wise NMS at IoU 0.6, the best 100 returned (mmdet's ``test_cfg`` of both configs).

Contract (as torchvision's detectors): ``images`` is a list of ``(3, H, W)`` floats in [0, 1] of any
sizes; they are resized (shorter side ``min_size``, or one drawn per image from a tuple in training, longer at
most ``max_size``), normalised with ImageNet statistics and padded to multiples of 32. Training:
``model(images, targets)`` with ``targets[i] = {"boxes": (N_i, 4) x1, y1, x2, y2 pixels, "labels":
(N_i,) int64 in 0 .. num_classes - 1}`` (``N_i`` may be 0) returns a dict of scalar losses. Eval:
``model(images)`` returns one ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` per image, in the
input image's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, clip_boxes_to_image

from ..base.constants import IMAGENET_MEAN, IMAGENET_STD
from .anchors import level_anchor_sizes
from .assigners import atss_assign
from .backbone import PVTWithFPN

__all__ = ["ONE_ANCHOR_SIZE", "ONE_STAGE_NECK", "STRIDES", "Scale", "OneStageHead", "OneStageDetector", "grid_anchors",
           "reduce_mean"]

ONE_STAGE_NECK = {"levels": (1, 2, 3), "extra": "p6p7_p5"}
"""The neck ATSS and GFL share (:func:`~pvt.dense.backbone.build_on_pvt`): C3..C5 -> 256, P6 and P7 from the
P5 output."""

#: the smallest anchor of ATSS and GFL: octave scale 8 x stride 8 (P3), doubling per level up to P7.
ONE_ANCHOR_SIZE = 64
#: the strides of P3 .. P7.
STRIDES = (8, 16, 32, 64, 128)


def reduce_mean(value: Tensor) -> Tensor:
    """The mean of ``value`` over the processes of a distributed run (``value`` itself otherwise): the
    loss normalisers (positives, weights) are averaged over GPUs, as mmdet does."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value.div_(dist.get_world_size()))
    return value


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level on the box outputs), initially ``init``."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, depth: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class OneStageHead(nn.Module):
    """The ATSS / GFL head, shared over the pyramid levels (see the module docstring).

    ``forward(feats)``: a list of ``(B, in_channels, H_l, W_l)`` maps -> a list with, per level, a tuple
    ``(cls (B, num_classes, H_l, W_l), box (B, box_outputs, H_l, W_l), centerness (B, 1, H_l, W_l) or
    None)``; ``box`` is already multiplied by its level's scale.

    Args:
        in_channels: the FPN width (256).
        num_classes: class logits per location (one anchor per location).
        box_outputs: box regression outputs per location (ATSS 4 deltas; GFL 4 x (reg_max + 1)).
        centerness: add a centerness output on the regression tower (ATSS).
        num_levels: pyramid levels (one scale each).
        stacked_convs, groups: the tower depth and GroupNorm groups (4 and 32, as the papers).
        prior_prob: the initial foreground probability of every class logit.
    """

    def __init__(self, in_channels: int, num_classes: int, box_outputs: int, centerness: bool = False,
                 num_levels: int = 5, stacked_convs: int = 4, groups: int = 32, prior_prob: float = 0.01):
        super().__init__()
        self.cls_convs = _tower(in_channels, stacked_convs, groups)
        self.reg_convs = _tower(in_channels, stacked_convs, groups)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, box_outputs, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1) if centerness else None
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        if len(feats) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} pyramid levels, got {len(feats)}")
        out = []
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = self.cls_convs(x), self.reg_convs(x)
            ctr = self.centerness(reg_feat) if self.centerness is not None else None
            out.append((self.cls_logits(cls_feat), scale(self.bbox_pred(reg_feat)).float(), ctr))
        return out


def grid_anchors(sizes: Sequence[tuple[int, int]], strides: Sequence[int], anchor_sides: Sequence[float],
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """One square anchor per location of each level: ``(H_l * W_l, 4)`` boxes x1, y1, x2, y2, row-major
    (the order of a flattened ``(H_l, W_l)`` map), centred on ``(j * stride, i * stride)`` with side
    ``anchor_sides[l]`` (mmdet's ``AnchorGenerator`` with centre offset 0, no rounding).

    Exact strides, unlike torchvision's ``AnchorGenerator``, which divides the padded image size by the map
    size (114 instead of 128 for a 7-row P7 of an 800-row image)."""
    out = []
    for (h, w), s, side in zip(sizes, strides, anchor_sides):
        ys = torch.arange(h, device=device, dtype=dtype) * s
        xs = torch.arange(w, device=device, dtype=dtype) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        c = torch.stack((cx.reshape(-1), cy.reshape(-1)), dim=1)
        out.append(torch.cat((c - side / 2, c + side / 2), dim=1))
    return out


def _valid_flags(sizes: Sequence[tuple[int, int]], strides: Sequence[int], image_size: Sequence[int],
                 divisor: int, device: torch.device) -> Tensor:
    """``(A,)`` bool: the anchors over the image or its own padding to a multiple of ``divisor`` (not
    the extra padding a larger image of the batch brought), as mmdet's valid flags."""
    pad_h, pad_w = (math.ceil(v / divisor) * divisor for v in image_size)
    flags = []
    for (h, w), s in zip(sizes, strides):
        rows = torch.arange(h, device=device) < min(math.ceil(pad_h / s), h)
        cols = torch.arange(w, device=device) < min(math.ceil(pad_w / s), w)
        flags.append((rows[:, None] & cols[None, :]).reshape(-1))
    return torch.cat(flags)


def _flatten(maps: Sequence[Tensor]) -> Tensor:
    """Per-level ``(B, K, H_l, W_l)`` -> ``(B, sum_l H_l W_l, K)`` in :func:`grid_anchors`' order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


class OneStageDetector(nn.Module):
    """A PVT + FPN one-stage detector with ATSS assignment: the shared body of :class:`~pvt.dense.atss.ATSS`
    and :class:`~pvt.dense.gfl.GFL` (see the module docstring for the contract).

    Subclasses build the head and implement :meth:`head_losses`, :meth:`level_scores` and :meth:`decode_boxes`.

    Keyword arguments: ``min_size`` (the shorter side; a tuple: one drawn per image in training, the last in eval),
    ``max_size`` (the longer side's cap), ``anchor_size`` (the anchor side on P3: the paper's 64 = octave
    scale 8 x stride 8, doubling per level; small objects need smaller ones, e.g. 16 on the built-in
    shapes; it changes no parameter), ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
    ``topk_candidates`` (per level, before decoding) and ``assign_topk`` (ATSS candidates per level).

    FLOPs: feed :meth:`forward_dummy` a ``(1, 3, H, W)`` tensor (backbone, FPN and head, no
    pre-processing or decoding, as mmdet's ``forward_dummy``).
    """

    task = "detection"

    def __init__(self, backbone: PVTWithFPN, head: OneStageHead, num_classes: int, *,
                 min_size: int | tuple[int, ...] = 800, max_size: int = 1333, anchor_size: int = ONE_ANCHOR_SIZE,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100,
                 topk_candidates: int = 1000, assign_topk: int = 9):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.size_divisible = 32
        min_sizes = min_size if isinstance(min_size, (tuple, list)) else (min_size,)
        self.transform = GeneralizedRCNNTransform(min_sizes, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD),
                                                  size_divisible=self.size_divisible)
        self.strides = STRIDES
        self.anchor_sizes = level_anchor_sizes(anchor_size)
        """The anchor side on P3 .. P7 (``anchor_size`` doubling per level)."""
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.assign_topk = assign_topk

    # -- the network
    def features(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised images -> the five 256-channel maps P3 .. P7."""
        return list(self.backbone(x).values())

    def forward_dummy(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """Backbone, FPN and head on a ``(B, 3, H, W)`` tensor: the raw per-level head outputs."""
        return self.head(self.features(x))

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("in training mode the detector needs targets (a list of {'boxes', 'labels'} dicts)")
        if targets is not None:
            _check_targets(images, targets, self.num_classes)
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        outputs = self.head(self.features(image_list.tensors))
        sizes = [tuple(cls.shape[-2:]) for cls, _, _ in outputs]
        anchors = grid_anchors(sizes, self.strides, self.anchor_sizes, image_list.tensors.device)
        if self.training:
            return self._losses(outputs, anchors, sizes, image_list.image_sizes, targets)
        detections = self._detect(outputs, anchors, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    # -- training
    def _losses(self, outputs, anchors: list[Tensor], sizes, image_sizes, targets) -> dict[str, Tensor]:
        counts = [a.shape[0] for a in anchors]
        flat_anchors = torch.cat(anchors)
        device = flat_anchors.device
        strides = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(counts, self.strides)])
        matched = []
        for t, size in zip(targets, image_sizes):
            valid = _valid_flags(sizes, self.strides, size, self.size_divisible, device)
            per_level = [int(v.sum()) for v in valid.split(counts)]
            m = torch.full((flat_anchors.shape[0],), -2, dtype=torch.long, device=device)
            m[valid] = atss_assign(flat_anchors[valid], per_level, t["boxes"], self.assign_topk)
            matched.append(m)
        matched_t = torch.stack(matched)  # (B, A): box index, -1 negative, -2 left out
        gt_boxes = torch.stack([t["boxes"][m.clamp(min=0)] if len(t["boxes"]) else
                                flat_anchors.new_zeros(m.shape[0], 4) for t, m in zip(targets, matched)])
        gt_labels = torch.stack([t["labels"][m.clamp(min=0)] if len(t["labels"]) else
                                 m.new_zeros(m.shape[0]) for t, m in zip(targets, matched)])
        gt_labels = torch.where(matched_t >= 0, gt_labels, self.num_classes)
        flat = [_flatten([o[k] for o in outputs]) if outputs[0][k] is not None else None for k in range(3)]
        return self.head_losses(*flat, anchors=flat_anchors, strides=strides, valid=matched_t > -2,
                                gt_boxes=gt_boxes, gt_labels=gt_labels)

    def head_losses(self, cls: Tensor, box: Tensor, ctr: Tensor | None, *, anchors: Tensor, strides: Tensor,
                    valid: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """The losses from the flattened head outputs and the assignment.

        Args:
            cls: ``(B, A, num_classes)`` class logits; box: ``(B, A, K)`` box outputs; ctr: ``(B, A, 1)``
                centerness logits or None.
            anchors: ``(A, 4)`` the anchors; strides: ``(A,)`` each anchor's level stride.
            valid: ``(B, A)`` bool, the anchors that count (all but the padding of smaller images).
            gt_boxes: ``(B, A, 4)`` each anchor's assigned box (meaningless for negatives).
            gt_labels: ``(B, A)`` each anchor's class, ``num_classes`` for negatives (and left-out anchors).
        """
        raise NotImplementedError

    # -- inference
    def level_scores(self, cls: Tensor, ctr: Tensor | None) -> tuple[Tensor, Tensor]:
        """One image, one level: ``cls (N, C)`` logits, ``ctr (N, 1)`` logits or None -> ``(scores (N, C),
        ranking (N,))``: the detection score per class, and what picks the level's best
        ``topk_candidates`` before decoding (mmdet's ``nms_pre``)."""
        raise NotImplementedError

    def decode_boxes(self, box: Tensor, anchors: Tensor, stride: int) -> Tensor:
        """``box (N, K)`` outputs of ``anchors (N, 4)`` on a level of ``stride`` -> ``(N, 4)`` boxes x1, y1,
        x2, y2 in the resized image's pixels."""
        raise NotImplementedError

    @torch.no_grad()
    def _detect(self, outputs, anchors: list[Tensor], image_sizes) -> list[dict[str, Tensor]]:
        results = []
        for i, size in enumerate(image_sizes):
            all_boxes, all_scores, all_labels = [], [], []
            for (cls, box, ctr), level_anchors, stride in zip(outputs, anchors, self.strides):
                c, b = cls[i].flatten(1).t(), box[i].flatten(1).t()
                scores, ranking = self.level_scores(c, ctr[i].flatten(1).t() if ctr is not None else None)
                if scores.shape[0] > self.topk_candidates:
                    keep = ranking.topk(self.topk_candidates).indices
                    scores, b, level_anchors = scores[keep], b[keep], level_anchors[keep]
                boxes = clip_boxes_to_image(self.decode_boxes(b, level_anchors, stride), tuple(size))
                idx, label = (scores > self.score_thresh).nonzero(as_tuple=True)
                all_boxes.append(boxes[idx])
                all_scores.append(scores[idx, label])
                all_labels.append(label)
            boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


def _check_targets(images: list[Tensor], targets: list[dict[str, Tensor]], num_classes: int) -> None:
    """A ValueError naming the first malformed target (torchvision's checks, plus the label range)."""
    if len(images) != len(targets):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be a (N, 4) tensor, got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]:
            raise ValueError(f"targets[{i}]['labels'] must be a ({boxes.shape[0]},) tensor")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in 0..{num_classes - 1}, got "
                             f"{int(labels.min())}..{int(labels.max())}")
        if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):
            raise ValueError(f"targets[{i}]['boxes'] has a degenerate box (x2 <= x1 or y2 <= y1)")
