"""Cascade Mask R-CNN on a PVT backbone, as PVT v2's Table 4 builds it (the official
``cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16`` config on mmdetection 2.13), from torchvision's parts.

* neck: FPN on C2..C5 (256 channels) + a max-pooled P6, as Mask R-CNN;
* RPN: torchvision's ``RegionProposalNetwork`` (one 3x3 conv, 3 anchors per location, 2000 proposals per
  image in training, 1000 at test);
* three cascaded stages trained at IoU 0.5 / 0.6 / 0.7 with loss weights 1 / 0.5 / 0.25. Each stage has
  its own box head (4 x (3x3 conv 256, BatchNorm, no bias) + 1 fc 1024; class-specific regression
  ``1024 -> 4 x num_classes``, classification ``1024 -> num_classes + 1``) and mask head (4 x 3x3 conv 256,
  2x2 stride-2 deconvolution, ``num_classes`` mask logits). A stage samples 512 RoIs per image (25 %
  positive, the ground-truth boxes added as proposals) from the boxes the previous stage refined;
  the regression is decoded and trained with the GIoU loss (weight 10);
* RoIAlign 7x7 (box) / 14x14 (mask) on P2..P5 through torchvision's ``MultiScaleRoIAlign``;
* at test, the class scores averaged over the three stages (logits averaged, then softmax), the last
  stage's class-specific boxes, class-wise NMS 0.5, at most 100 detections; masks averaged over the
  three mask heads (after the sigmoid), as mmdetection.

torchvision's detection contract (see :mod:`pvt.dense.retinanet`), with ``masks`` ``(N, 1, H, W)`` in
[0, 1] per image in eval mode. Labels are ``0 .. num_classes - 1``; the background class is
``num_classes`` inside the box heads. Parameters: B2 82,852,466, B2-Li 80,043,122 (Table 4: 83M / 80M).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import (
    MultiScaleRoIAlign,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    roi_align,
)

from ..base.marks import mark_uncounted
from .anchors import DEFAULT_ANCHOR_SIZE, rpn_anchors
from .backbone import PVTWithFPN, build_on_pvt, detector_transform
from .inputs import check_images

__all__ = ["BoxPredictor", "CascadeStage", "CascadeRoIHeads", "PVTCascadeMaskRCNN", "cascade_mask_rcnn",
           "STAGE_IOUS", "STAGE_LOSS_WEIGHTS", "STAGE_STDS"]

#: the IoU a proposal needs to be a positive of each stage (mmdet's MaxIoUAssigner, no low-quality matches)
STAGE_IOUS = (0.5, 0.6, 0.7)
#: each stage's weight in the total loss (mmdet's ``stage_loss_weights``)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
#: the standard deviations each stage's regression targets are scaled by (mmdet's ``target_stds``)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class BoxPredictor(nn.Module):
    """The classifier and class-specific box regressor of a box head (mmdet's ``fc_cls`` / ``fc_reg``).

    ``(R, C) -> (R, num_classes + 1)`` logits (the last column is background) and ``(R, 4 x num_classes)``
    deltas. Initialised as mmdet: normal std 0.01 (classifier) and 0.001 (regressor), zero biases.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    """One stage of the cascade: a box head (4 convs + 1 fc, ``BoxPredictor``) and a mask head.

    ``box_forward``: RoI features ``(R, 256, 7, 7)`` -> logits ``(R, K + 1)``, deltas ``(R, 4K)``;
    ``mask_forward``: ``(R, 256, 14, 14)`` -> mask logits ``(R, K, 28, 28)``. ``iou`` is the IoU a
    proposal needs to be one of this stage's positives, ``weight`` the stage's loss weight, ``coder`` its
    box coder (weights ``1 / std``).
    """

    def __init__(self, num_classes: int, iou: float, weight: float, stds: Sequence[float],
                 channels: int = 256, roi_size: int = 7, fc_channels: int = 1024):
        super().__init__()
        # mmdet's ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm SyncBN): torchvision's
        # FastRCNNConvFCHead is the same stack (convs kaiming-normal fan-out, as mmcv's ConvModule)
        self.box_head = FastRCNNConvFCHead((channels, roi_size, roi_size), [channels] * 4, [fc_channels],
                                           norm_layer=nn.BatchNorm2d)
        for m in self.box_head.modules():
            if isinstance(m, nn.Linear):  # mmdet: Xavier-uniform shared fcs, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):  # SyncBN in the official config: mmcv 1.3 counts none
                mark_uncounted(m, "SyncBN in the official config; mmcv 1.3 has no FLOP rule for it")
        self.box_predictor = BoxPredictor(fc_channels, num_classes)
        # mmdet's FCNMaskHead: 4 x conv3x3 (bias) + ReLU, deconv 2x2 / 2 + ReLU, 1x1 conv to the classes
        self.mask_head = nn.Sequential(MaskRCNNHeads(channels, [channels] * 4, 1),
                                       MaskRCNNPredictor(channels, channels, num_classes))
        for m in self.mask_head.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)  # mmdet zeroes every mask-head bias (torchvision leaves two default)
        self.iou, self.weight = float(iou), float(weight)
        self.coder = BoxCoder(tuple(1.0 / s for s in stds))

    def box_forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(roi_feats))

    def mask_forward(self, roi_feats: Tensor) -> Tensor:
        return self.mask_head(roi_feats)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """``(N, 4)`` deltas applied to ``(N, 4)`` boxes (x1, y1, x2, y2) -> ``(N, 4)`` boxes."""
        if deltas.numel() == 0:
            return boxes.new_zeros(0, 4)
        return self.coder.decode_single(deltas, boxes)


class CascadeRoIHeads(nn.Module):
    """The three-stage cascade over FPN features, in torchvision's ``RoIHeads`` contract:
    ``(features, proposals, image_shapes, targets) -> (detections, losses)``.

    Args:
        stages: the :class:`CascadeStage` s, first to last.
        num_classes: foreground classes (background is ``num_classes`` inside).
        box_pool / mask_pool: RoIAlign over the FPN levels (7x7 / 14x14).
        rois_per_image: RoIs sampled per image per stage in training (mmdet's 512), 25 % positive at most.
        score_thresh, nms_thresh, detections_per_img: the test-time post-processing (0.05, 0.5, 100).
        giou_weight: the GIoU loss weight (10).
    """

    def __init__(self, stages: Sequence[CascadeStage], num_classes: int, box_pool: MultiScaleRoIAlign,
                 mask_pool: MultiScaleRoIAlign, rois_per_image: int = 512, positive_fraction: float = 0.25,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 giou_weight: float = 10.0):
        super().__init__()
        if rois_per_image < 1:
            raise ValueError(f"rois_per_image={rois_per_image!r}: expected at least 1")
        self.stages = nn.ModuleList(stages)
        self.num_classes = num_classes
        self.box_pool, self.mask_pool = box_pool, mask_pool
        self.rois_per_image = rois_per_image
        self.sampler = BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.giou_weight = giou_weight

    # ------------------------------------------------------------------ training
    def sample(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou: float
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One image's RoIs for a stage: the ground truth is added to the ``(P, 4)`` proposals, each box
        is matched to the ground-truth box it overlaps most (positive at IoU >= ``iou``, else negative),
        and ``rois_per_image`` are drawn with at most 25 % positives.

        Returns ``(rois (R, 4), labels (R,) in 0..K with K background, matched (R,) index of the
        ground-truth box or -1, is_gt (R,) bool: the RoI is a ground-truth box)``.
        """
        rois = torch.cat([gt_boxes.to(proposals.dtype), proposals])
        is_gt = torch.zeros(len(rois), dtype=torch.bool, device=rois.device)
        is_gt[: len(gt_boxes)] = True
        if len(gt_boxes) == 0:
            matched = torch.full((len(rois),), -1, dtype=torch.int64, device=rois.device)
        else:
            matched = Matcher(iou, iou, allow_low_quality_matches=False)(box_iou(gt_boxes, rois))
        labels = torch.where(matched >= 0, gt_labels[matched.clamp(min=0)] if len(gt_boxes) else matched,
                             torch.full_like(matched, self.num_classes))
        pos, neg = self.sampler([(matched >= 0).to(torch.int64)])
        keep = torch.where(pos[0] | neg[0])[0]
        return rois[keep], labels[keep], matched[keep], is_gt[keep]

    def _stage_losses(self, stage: CascadeStage, features: "OrderedDict[str, Tensor]", image_shapes,
                      targets: list[dict[str, Tensor]], proposals: list[Tensor]
                      ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """One stage's losses and the refined (detached) proposals for the next stage."""
        sampled = [self.sample(p, t["boxes"], t["labels"], stage.iou) for p, t in zip(proposals, targets)]
        rois = [s[0] for s in sampled]
        labels = torch.cat([s[1] for s in sampled])
        logits, deltas = stage.box_forward(self.box_pool(features, rois, image_shapes))
        k = self.num_classes
        n = max(len(labels), 1)
        loss_cls = F.cross_entropy(logits, labels, reduction="sum") / n
        deltas = deltas.reshape(len(labels), k, 4)
        pos = torch.where(labels < k)[0]
        all_rois = torch.cat(rois)
        if len(pos):
            gt = torch.cat([t["boxes"][s[2].clamp(min=0)] for s, t in zip(sampled, targets)])
            pred = stage.decode(deltas[pos, labels[pos]], all_rois[pos])
            loss_box = generalized_box_iou_loss(pred, gt[pos], reduction="sum") / n * self.giou_weight
        else:
            loss_box = (deltas * 0).sum()
        # masks of the positive RoIs (the proposals this stage was given, before its own regression)
        pos_rois = [s[0][s[1] < k] for s in sampled]
        pos_matched = [s[2][s[1] < k] for s in sampled]
        mask_logits = stage.mask_forward(self.mask_pool(features, pos_rois, image_shapes))
        loss_mask = maskrcnn_loss(mask_logits, pos_rois, [t["masks"] for t in targets],
                                  [t["labels"] for t in targets], pos_matched)
        losses = {"loss_cls": loss_cls, "loss_box": loss_box, "loss_mask": loss_mask}
        # refine: negatives regress with their most likely class; the ground-truth RoIs are dropped
        with torch.no_grad():
            cls_for_box = torch.where(labels < k, labels, logits[:, :k].argmax(1))
            boxes = stage.decode(deltas[torch.arange(len(labels)), cls_for_box], all_rois)
            refined = []
            for b, s, shape in zip(boxes.split([len(r) for r in rois]), sampled, image_shapes):
                refined.append(clip_boxes_to_image(b, shape)[~s[3]].detach())
        return losses, refined

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _predict(self, features: "OrderedDict[str, Tensor]", proposals: list[Tensor], image_shapes
                 ) -> list[dict[str, Tensor]]:
        counts = [len(p) for p in proposals]
        k = self.num_classes
        rois = proposals
        logit_sum: Tensor | None = None
        deltas = torch.zeros(0)
        for i, stage in enumerate(self.stages):
            logits, deltas = stage.box_forward(self.box_pool(features, rois, image_shapes))
            logit_sum = logits if logit_sum is None else logit_sum + logits
            if i < len(self.stages) - 1:
                flat = deltas.reshape(len(logits), k, 4)[torch.arange(len(logits)), logits[:, :k].argmax(1)]
                boxes = stage.decode(flat, torch.cat(rois))
                rois = [clip_boxes_to_image(b, s) for b, s in zip(boxes.split(counts), image_shapes)]
        assert logit_sum is not None
        scores = F.softmax(logit_sum / len(self.stages), -1)[:, :k]
        last = self.stages[-1]
        all_rois = torch.cat(rois)
        boxes = last.decode(deltas.reshape(-1, 4), all_rois.repeat_interleave(k, 0)).reshape(-1, k, 4)
        out = []
        for b, s, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            b = clip_boxes_to_image(b, shape).reshape(-1, 4)
            labels = torch.arange(k, device=b.device).repeat(len(s))
            s = s.reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": b[keep], "scores": s[keep], "labels": labels[keep]})
        det_boxes = [d["boxes"] for d in out]
        if sum(len(b) for b in det_boxes):
            feats = self.mask_pool(features, det_boxes, image_shapes)
            probs = torch.stack([stage.mask_forward(feats).sigmoid() for stage in self.stages]).mean(0)
            labels = torch.cat([d["labels"] for d in out])
            probs = probs[torch.arange(len(labels)), labels][:, None]
        else:
            size = self.mask_pool.output_size[0] * 2
            probs = det_boxes[0].new_zeros(0, 1, size, size)
        for d, p in zip(out, probs.split([len(b) for b in det_boxes])):
            d["masks"] = p
        return out

    def forward(self, features: "OrderedDict[str, Tensor]", proposals: list[Tensor], image_shapes,
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return self._predict(features, proposals, image_shapes), {}
        if targets is None or any("masks" not in t for t in targets):
            raise ValueError("Cascade Mask R-CNN training needs targets with boxes, labels and masks")
        losses: dict[str, Tensor] = {}
        for i, stage in enumerate(self.stages):
            stage_losses, proposals = self._stage_losses(stage, features, image_shapes, targets, proposals)
            losses.update({f"{name}_s{i}": value * stage.weight for name, value in stage_losses.items()})
        return [], losses


class PVTCascadeMaskRCNN(GeneralizedRCNN):
    """torchvision's two-stage frame (transform, backbone, RPN, RoI heads) with a :class:`CascadeRoIHeads`.

    FLOPs: ``model.forward_dummy`` on a ``(1, 3, H, W)`` tensor runs what mmdet's ``forward_dummy`` runs:
    backbone, FPN, the RPN head, 1000 RoIs through each of the three box heads and the first 100 through
    each of the three mask heads (no NMS, no refinement between stages).
    """

    task = "instance"

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        check_images(images, self.transform)  # a named error for an image the resize would empty
        return super().forward(images, targets)

    def forward_dummy(self, x: Tensor, num_rois: int = 1000, num_mask_rois: int = 100):
        feats = self.backbone(x)
        outs: list = [self.rpn.head(list(feats.values()))]
        # mmdet's dummy proposals are random and tiny, so they all fall on P2; pooling them there directly
        # (RoIAlign is not counted) lets the pass run on "meta" tensors
        p2 = next(iter(feats.values()))
        box = torch.tensor([0.0, 0.0, 0.0, 32.0, 32.0], device=p2.device)
        rois = box.expand(num_rois, 5).contiguous()
        heads: CascadeRoIHeads = self.roi_heads  # type: ignore[assignment]
        box_feats = roi_align(p2, rois, heads.box_pool.output_size, 0.25, heads.box_pool.sampling_ratio)
        mask_feats = roi_align(p2, rois[:num_mask_rois], heads.mask_pool.output_size, 0.25,
                               heads.mask_pool.sampling_ratio)
        for stage in heads.stages:
            outs.append(stage.box_forward(box_feats))
        for stage in heads.stages:
            outs.append(stage.mask_forward(mask_feats))
        return outs


def cascade_mask_rcnn(backbone: str, num_classes: int = 80, pretrained: str | Path | None = None,
                      drop_path_rate: float = 0.1, anchor_size: int = DEFAULT_ANCHOR_SIZE, rois_per_image: int = 512,
                      test_proposals: int = 1000, score_thresh: float = 0.05, detections_per_img: int = 100,
                      **transform: Any) -> PVTCascadeMaskRCNN:
    """Cascade Mask R-CNN with a ``backbone`` PVT and ``num_classes`` object classes (background not counted).

    ``anchor_size``: the RPN's smallest anchor (P2; 32 px, doubling up to 512). ``rois_per_image``: RoIs
    sampled per image per stage in training (the paper's 512). ``test_proposals``: RPN proposals kept per
    image at test (the paper's 1000). Small images (the built-in shapes) need fewer of both; neither
    changes a parameter. ``transform``: ``min_size`` / ``max_size`` of
    :func:`~pvt.dense.backbone.detector_transform`.
    """
    if test_proposals < 1:
        raise ValueError(f"test_proposals={test_proposals!r}: expected at least 1")

    def assemble(neck: PVTWithFPN, classes: int) -> PVTCascadeMaskRCNN:
        rpn = RegionProposalNetwork(
            rpn_anchors(anchor_size), RPNHead(neck.out_channels, 3),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": 2000, "testing": test_proposals},
            post_nms_top_n={"training": 2000, "testing": test_proposals}, nms_thresh=0.7,
        )
        levels = ["0", "1", "2", "3"]
        stages = [CascadeStage(classes, iou, weight, stds)
                  for iou, weight, stds in zip(STAGE_IOUS, STAGE_LOSS_WEIGHTS, STAGE_STDS)]
        heads = CascadeRoIHeads(stages, classes, MultiScaleRoIAlign(levels, 7, 0), MultiScaleRoIAlign(levels, 14, 0),
                                rois_per_image=rois_per_image, score_thresh=score_thresh,
                                detections_per_img=detections_per_img)
        return PVTCascadeMaskRCNN(neck, rpn, heads, detector_transform(**transform))

    return build_on_pvt(assemble, backbone, num_classes, pretrained, drop_path_rate, levels=(0, 1, 2, 3), extra="pool")
