"""Sparse R-CNN on a PVT backbone, as PVT v2's Table 4 builds it (the official
``sparse_rcnn_pvt_v2_b2_fpn_300_proposals_crop_mstrain_480-800_3x_coco`` config on mmdetection 2.13).

* neck: FPN on C2..C5, 256 channels, four outputs P2..P5 (no extra level);
* 300 learned proposals: boxes ``(300, 4)`` (centre x, centre y, width, height as fractions of the image,
  starting as the whole image) and features ``(300, 256)``;
* six dynamic-instance-interaction stages (mmdet's ``DIIHead``), each: self-attention over the proposal
  features (8 heads, 256 channels) + LayerNorm; a dynamic convolution of the proposal's 7x7 RoI features
  (RoIAlign, sampling ratio 2) with kernels generated from its feature (``Linear(256, 2 x 256 x 64)``,
  LayerNorms 64 and 256, ``Linear(7 x 7 x 256, 256)``) + LayerNorm; an FFN 256 -> 2048 -> 256 + LayerNorm;
  a classifier (Linear without bias, LN, ReLU, ``Linear(256, num_classes)``, sigmoid scores) and a box
  regressor (3 x (Linear without bias, LN, ReLU), ``Linear(256, 4)``) whose deltas (stds 0.5, 0.5, 1, 1)
  refine the stage's boxes, the next stage's proposals;
* set prediction: every stage's predictions are matched one-to-one to the ground truth (Hungarian
  matching on focal class cost x 2 + L1 x 5 on boxes normalised by the image size + GIoU x 2) and trained
  with the focal loss (x 2), L1 (x 5) and GIoU (x 2) losses, each normalised by the matched count;
  unmatched proposals learn background;
* at test, the last stage's top ``num_proposals`` (class, box) pairs by sigmoid score, no NMS.

torchvision's detection contract (see :mod:`pvt.dense.retinanet`): ``GeneralizedRCNNTransform`` resizes,
normalises and pads the images. Parameters: B2 106,963,816, B2-Li 104,154,472 (Table 4: 107M / 104M).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import (
    MultiScaleRoIAlign,
    box_convert,
    clip_boxes_to_image,
    generalized_box_iou,
    generalized_box_iou_loss,
    roi_align,
    sigmoid_focal_loss,
)

from ..base.marks import mark_uncounted
from .backbone import PVTWithFPN, build_on_pvt, detector_transform
from .inputs import check_images

__all__ = ["DynamicConv", "DIIStage", "HungarianMatcher", "PVTSparseRCNN", "sparse_rcnn"]


class DynamicConv(nn.Module):
    """The instance interaction: each proposal's RoI features go through two 1x1 "convolutions" whose
    kernels are generated from that proposal's feature.

    ``(params (N, C), roi_feats (N, C, S, S)) -> (N, C)``: ``(S*S, C) @ (C, F)`` -> LN, ReLU ->
    ``@ (F, C)`` -> LN, ReLU -> flatten -> ``Linear(S*S*C, C)`` -> LN, ReLU (``F`` = ``feat_channels``).
    """

    def __init__(self, channels: int = 256, feat_channels: int = 64, roi_size: int = 7):
        super().__init__()
        self.channels, self.feat_channels = channels, feat_channels
        self.dynamic_layer = nn.Linear(channels, 2 * channels * feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(channels)
        self.activation = nn.ReLU(inplace=True)
        self.fc_layer = nn.Linear(channels * roi_size * roi_size, channels)
        self.fc_norm = nn.LayerNorm(channels)

    def forward(self, params: Tensor, roi_feats: Tensor) -> Tensor:
        c, f = self.channels, self.feat_channels
        x = roi_feats.flatten(2).transpose(1, 2)  # (N, S*S, C)
        kernels = self.dynamic_layer(params)
        k_in = kernels[:, : c * f].reshape(-1, c, f)
        k_out = kernels[:, c * f:].reshape(-1, f, c)
        x = self.activation(self.norm_in(torch.bmm(x, k_in)))
        x = self.activation(self.norm_out(torch.bmm(x, k_out)))
        return self.activation(self.fc_norm(self.fc_layer(x.flatten(1))))


def _fc_stack(channels: int, depth: int) -> nn.Sequential:
    """``depth`` x (Linear without bias, LayerNorm, ReLU)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DIIStage(nn.Module):
    """One Sparse R-CNN stage (mmdet's ``DIIHead``).

    ``(roi_feats (B*P, C, 7, 7), features (B, P, C)) -> (logits (B, P, K), deltas (B, P, 4),
    features (B, P, C))``. Initialised as mmdet: Xavier-uniform for every weight matrix, default biases,
    the classifier's bias at a 1 % prior; ``zero_reg_init``: the box regressor at zero instead, so every
    stage starts by keeping its input boxes (from scratch, random deltas compound over the six stages and
    collapse the last stage's boxes, the ones evaluation scores; docs/detectors_cascade_sparse.md).
    """

    def __init__(self, num_classes: int, channels: int = 256, num_heads: int = 8, ffn_channels: int = 2048,
                 feat_channels: int = 64, roi_size: int = 7, num_cls_fcs: int = 1, num_reg_fcs: int = 3,
                 zero_reg_init: bool = False):
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        mark_uncounted(self.attention, "nn.MultiheadAttention: mmcv 1.3 has no FLOP rule for it")
        self.attention_norm = nn.LayerNorm(channels)
        self.instance_interactive_conv = DynamicConv(channels, feat_channels, roi_size)
        self.instance_interactive_conv_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Linear(ffn_channels, channels))
        self.ffn_norm = nn.LayerNorm(channels)
        self.cls_fcs = _fc_stack(channels, num_cls_fcs)
        self.fc_cls = nn.Linear(channels, num_classes)
        self.reg_fcs = _fc_stack(channels, num_reg_fcs)
        self.fc_reg = nn.Linear(channels, 4)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))
        if zero_reg_init:
            nn.init.zeros_(self.fc_reg.weight)
            nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feats: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, p, c = features.shape
        x = self.attention_norm(features + self.attention(features, features, features, need_weights=False)[0])
        x = x.reshape(b * p, c)
        x = self.instance_interactive_conv_norm(x + self.instance_interactive_conv(x, roi_feats))
        x = self.ffn_norm(x + self.ffn(x))
        logits = self.fc_cls(self.cls_fcs(x)).reshape(b, p, -1)
        deltas = self.fc_reg(self.reg_fcs(x)).reshape(b, p, 4)
        return logits, deltas, x.reshape(b, p, c)


class HungarianMatcher:
    """One-to-one assignment of predictions to ground-truth boxes with the least total cost (scipy's
    ``linear_sum_assignment``): ``cls_weight`` x focal class cost + ``l1_weight`` x L1 distance of the
    boxes divided by the image's (w, h, w, h) + ``giou_weight`` x (-GIoU).

    ``(logits (P, K), boxes (P, 4), gt_boxes (G, 4), gt_labels (G,), whwh (4,)) -> (pred_idx, gt_idx)``,
    ``min(P, G)`` pairs each (boxes x1, y1, x2, y2 in pixels).
    """

    def __init__(self, cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0):
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def cost(self, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, whwh: Tensor) -> Tensor:
        """The ``(P, G)`` cost matrix."""
        prob = logits.float().sigmoid()
        eps = 1e-12
        neg = (1 - self.alpha) * prob.pow(self.gamma) * -(1 - prob + eps).log()
        pos = self.alpha * (1 - prob).pow(self.gamma) * -(prob + eps).log()
        cls = (pos - neg)[:, gt_labels]
        l1 = torch.cdist(boxes.float() / whwh, gt_boxes.float() / whwh, p=1)
        giou = -generalized_box_iou(boxes.float(), gt_boxes.float())
        return self.cls_weight * cls + self.l1_weight * l1 + self.giou_weight * giou

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, whwh: Tensor
                 ) -> tuple[Tensor, Tensor]:
        if len(gt_boxes) == 0 or len(boxes) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
            return empty, empty
        cost = self.cost(logits, boxes, gt_boxes, gt_labels, whwh)
        # a diverged model's NaN would stop scipy mid-run; its loss shows the NaN anyway
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        as_long = lambda a: torch.as_tensor(a, dtype=torch.int64, device=boxes.device)  # noqa: E731
        return as_long(rows), as_long(cols)


class PVTSparseRCNN(nn.Module):
    """Sparse R-CNN over ``PVTWithFPN(C2..C5 -> P2..P5)`` (see the module docstring).

    ``forward(images, targets=None)``: training returns the losses of every stage
    (``loss_{cls,bbox,iou}_s{i}``); eval returns one dict per image with ``boxes``, ``scores``, ``labels``.
    FLOPs: ``model.forward_dummy`` on a ``(1, 3, H, W)`` tensor (backbone, FPN, the proposals through all
    stages, as mmdet's ``forward_dummy``).
    """

    task = "detection"

    def __init__(self, backbone: PVTWithFPN, num_classes: int, transform: GeneralizedRCNNTransform,
                 num_proposals: int = 300, num_stages: int = 6, roi_size: int = 7, sampling_ratio: int = 2,
                 detections_per_img: int | None = None, zero_reg_init: bool = False):
        super().__init__()
        if num_proposals < 1 or num_stages < 1:
            raise ValueError(f"num_proposals={num_proposals!r}, num_stages={num_stages!r}: expected at least 1 each")
        c = backbone.out_channels
        self.backbone, self.transform, self.num_classes = backbone, transform, num_classes
        self.num_proposals = num_proposals
        self.init_proposal_bboxes = nn.Embedding(num_proposals, 4)
        nn.init.constant_(self.init_proposal_bboxes.weight[:, :2], 0.5)  # centred, whole image
        nn.init.constant_(self.init_proposal_bboxes.weight[:, 2:], 1.0)
        self.init_proposal_features = nn.Embedding(num_proposals, c)
        self.box_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], roi_size, sampling_ratio)
        self.stages = nn.ModuleList(DIIStage(num_classes, c, roi_size=roi_size, zero_reg_init=zero_reg_init)
                                    for _ in range(num_stages))
        self.coder = BoxCoder((2.0, 2.0, 1.0, 1.0))  # target stds 0.5, 0.5, 1, 1
        self.matcher = HungarianMatcher()
        self.loss_weights = {"cls": 2.0, "bbox": 5.0, "iou": 2.0}
        self.detections_per_img = detections_per_img or num_proposals

    def _initial_boxes(self, whwh: Tensor) -> Tensor:
        """The learned proposals in pixels: ``(B, 4)`` image sizes -> ``(B, P, 4)`` boxes."""
        return box_convert(self.init_proposal_bboxes.weight, "cxcywh", "xyxy")[None] * whwh[:, None]

    def _stages(self, feats: "OrderedDict[str, Tensor]", image_sizes: list[tuple[int, int]], whwh: Tensor
                ) -> list[tuple[Tensor, Tensor]]:
        """Every stage's ``(logits (B, P, K), boxes (B, P, 4))``; each stage starts from the previous
        stage's boxes, detached, and features (the first from the learned ones)."""
        b = len(image_sizes)
        boxes = self._initial_boxes(whwh)
        features = self.init_proposal_features.weight[None].expand(b, -1, -1)
        out = []
        for stage in self.stages:
            roi_feats = self.box_pool(feats, list(boxes), image_sizes)
            logits, deltas, features = stage(roi_feats, features)
            boxes = self.coder.decode_single(deltas.reshape(-1, 4), boxes.reshape(-1, 4)).reshape(b, -1, 4)
            out.append((logits, boxes))
            boxes = boxes.detach()
        return out

    def losses(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]], whwh: Tensor
               ) -> dict[str, Tensor]:
        """One stage's losses: focal (all proposals; the unmatched ones towards background), L1 and GIoU
        (matched ones), each divided by the number of matched proposals (at least 1)."""
        target_cls = torch.zeros_like(logits)
        pred, gt, scale = [], [], []
        for j, t in enumerate(targets):
            pi, gi = self.matcher(logits[j].detach(), boxes[j].detach(), t["boxes"], t["labels"], whwh[j])
            target_cls[j, pi, t["labels"][gi]] = 1.0
            pred.append(boxes[j][pi])
            gt.append(t["boxes"][gi])
            scale.append(whwh[j].expand(len(pi), 4))
        pred_t, gt_t, scale_t = torch.cat(pred), torch.cat(gt), torch.cat(scale)
        n = max(len(pred_t), 1)
        w = self.loss_weights
        out = {"loss_cls": sigmoid_focal_loss(logits, target_cls, 0.25, 2.0, reduction="sum") / n * w["cls"]}
        if len(pred_t):
            out["loss_bbox"] = (pred_t / scale_t - gt_t / scale_t).abs().sum() / n * w["bbox"]
            out["loss_iou"] = generalized_box_iou_loss(pred_t, gt_t, reduction="sum") / n * w["iou"]
        else:
            out["loss_bbox"] = out["loss_iou"] = (boxes * 0).sum()
        return out

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("Sparse R-CNN training needs targets (boxes and labels per image)")
        check_images(images, self.transform)
        original_sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        batch, targets = self.transform(images, targets)
        sizes = batch.image_sizes
        feats = self.backbone(batch.tensors)
        whwh = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=batch.tensors.dtype, device=batch.tensors.device)
        outs = self._stages(feats, sizes, whwh)
        if self.training:
            assert targets is not None
            losses: dict[str, Tensor] = {}
            for i, (logits, boxes) in enumerate(outs):
                losses.update({f"{k}_s{i}": v for k, v in self.losses(logits, boxes, targets, whwh).items()})
            return losses
        logits, boxes = outs[-1]
        scores = logits.sigmoid().flatten(1)  # (B, P * K)
        k = min(self.detections_per_img, scores.shape[1])
        dets = []
        for s, b, size in zip(scores, boxes, sizes):
            top, idx = s.topk(k)
            dets.append({"boxes": clip_boxes_to_image(b[idx // self.num_classes], size), "scores": top,
                         "labels": idx % self.num_classes})
        return self.transform.postprocess(dets, sizes, original_sizes)

    def forward_dummy(self, x: Tensor):
        feats = self.backbone(x)
        h, w = x.shape[-2:]
        whwh = x.new_tensor([[w, h, w, h]])
        boxes = self._initial_boxes(whwh)[0]
        features = self.init_proposal_features.weight[None]
        # all RoIs pooled from P2 (RoIAlign is not counted), so that the pass also runs on "meta" tensors
        p2 = next(iter(feats.values()))
        outs = []
        for stage in self.stages:
            rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1)
            roi_feats = roi_align(p2, rois, self.box_pool.output_size, 0.25, self.box_pool.sampling_ratio)
            logits, deltas, features = stage(roi_feats, features)
            boxes = self.coder.decode_single(deltas.reshape(-1, 4), boxes)
            outs.append((logits, boxes))
        return outs


def sparse_rcnn(backbone: str, num_classes: int = 80, pretrained: str | Path | None = None, drop_path_rate: float = 0.1,
                num_proposals: int = 300, num_stages: int = 6, zero_reg_init: bool = False,
                **transform: Any) -> PVTSparseRCNN:
    """Sparse R-CNN with a ``backbone`` PVT and ``num_classes`` object classes.

    ``num_proposals``: learned proposals (the paper's 300; small images with few objects need fewer,
    and the count sets the proposal embeddings' size); ``num_stages``: refinement stages (the paper's 6).
    ``zero_reg_init``: the box regressors start at zero (see :class:`DIIStage`; the official
    initialisation is Xavier, the default). ``transform``: ``min_size`` / ``max_size`` of
    :func:`~pvt.dense.backbone.detector_transform`.
    """
    return build_on_pvt(PVTSparseRCNN, backbone, num_classes, pretrained, drop_path_rate, levels=(0, 1, 2, 3),
                        extra=None, transform=detector_transform(**transform), num_proposals=num_proposals,
                        num_stages=num_stages, zero_reg_init=zero_reg_init)
