"""Sparse R-CNN (PVT v2 Table 4): the exact parameter counts and GFLOPs of the paper's build, the
Hungarian matcher on hand-made cases, training and inference at odd sizes, images without objects, the
head's recipe, and learning floors (a few training images fitted; held-out images under ``-m slow``)."""

import itertools
import math

import pytest
import torch
from torchvision.ops import generalized_box_iou

from pvt.dense import create_dense_model
from pvt.dense.sparse_rcnn import HungarianMatcher

# PAPER_FACTS "Paper Table 4": the counts of the official config rebuilt on mmdet 2.13
PAPER_FACTS = {"pvt_v2_b2": (106_963_816, 214.6, 107, 215), "pvt_v2_b2_li": (104_154_472, 151.3, 104, 151)}
NECK, PROPOSALS, STAGE = 2_623_488, 78_000, 13_235_412


@pytest.mark.parametrize("backbone", list(PAPER_FACTS))
def test_parameter_counts_are_the_papers(backbone, table4):
    built = table4(f"sparse_rcnn_{backbone}")
    model, n = built.model, built.count
    exact, _, paper_m, _ = PAPER_FACTS[backbone]
    assert paper_m == built.spec.paper_params_m
    built.params_match(exact)
    assert n(model.backbone.fpn) == NECK and model.backbone.fpn.extra_blocks is None  # P2..P5 only
    assert n(model.init_proposal_bboxes) + n(model.init_proposal_features) == PROPOSALS
    assert len(model.stages) == 6 and all(n(s) == STAGE for s in model.stages)
    dyn = model.stages[0].instance_interactive_conv
    assert (dyn.dynamic_layer.in_features, dyn.dynamic_layer.out_features) == (256, 2 * 256 * 64)
    assert dyn.fc_layer.in_features == 7 * 7 * 256


@pytest.mark.parametrize("backbone", list(PAPER_FACTS))
def test_gflops_are_table4s(backbone, table4):
    built = table4(f"sparse_rcnn_{backbone}")
    _, facts, _, paper = PAPER_FACTS[backbone]
    assert paper == built.spec.paper_gflops
    built.gflops_match(facts)
    assert built.flops.attention_flops > 0  # the PVT attention products (the paper's get_flops adds them)
    # mmcv 1.3 does not count nn.MultiheadAttention: 6 stages x (4 projections + Q K^T + A V) on 300 x 256
    assert built.all_flops.flops - built.flops.flops == 6 * (4 * 300 * 256 * 256 + 2 * 300 * 300 * 256)


def test_hungarian_matcher_by_hand():
    matcher = HungarianMatcher()
    whwh = torch.tensor([100.0, 100.0, 100.0, 100.0])
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 90.0, 90.0]])
    labels = torch.tensor([1, 0])
    # prediction 0 sits on gt 1, prediction 2 on gt 0, prediction 1 is far from both
    boxes = torch.tensor([[50.0, 50.0, 90.0, 90.0], [0.0, 80.0, 5.0, 95.0], [10.0, 10.0, 30.0, 30.0]])
    logits = torch.zeros(3, 2)
    pred, tgt = matcher(logits, boxes, gt, labels, whwh)
    assert sorted(zip(pred.tolist(), tgt.tolist())) == [(0, 1), (2, 0)]
    # the cost is 2 x focal class cost + 5 x L1 on boxes / image size - 2 x GIoU, as mmdet's
    cost = matcher.cost(logits, boxes, gt, labels, whwh)
    p = torch.tensor(0.5)
    focal = 0.25 * (1 - p) ** 2 * -p.log() - 0.75 * p ** 2 * -(1 - p).log()
    l1 = (boxes[1] - gt[0]).abs().sum() / 100
    giou = generalized_box_iou(boxes[1:2], gt[:1])[0, 0]
    assert cost[1, 0] == pytest.approx(float(2 * focal + 5 * l1 - 2 * giou), rel=1e-5)
    # a confident class turns the assignment: the optimum over all assignments, not a greedy pick
    torch.manual_seed(0)
    for _ in range(20):
        boxes = torch.rand(4, 2) * 60
        boxes = torch.cat([boxes, boxes + 5 + torch.rand(4, 2) * 30], 1)
        logits = torch.randn(4, 2) * 3
        cost = matcher.cost(logits, boxes, gt, labels, whwh)
        pred, tgt = matcher(logits, boxes, gt, labels, whwh)
        best = min(sum(cost[p_, t_] for p_, t_ in zip(perm, range(2))) for perm in itertools.permutations(range(4), 2))
        assert float(cost[pred, tgt].sum()) == pytest.approx(float(best), rel=1e-6)
        assert len(set(pred.tolist())) == 2  # one prediction per ground-truth box
    # no ground truth: no pair
    pred, tgt = matcher(logits, boxes, gt[:0], labels[:0], whwh)
    assert pred.numel() == 0 and tgt.numel() == 0


def _small(backbone="pvt_v2_b0", **kw):
    kw = {"min_size": 67, "max_size": 101, "num_proposals": 20, **kw}
    return create_dense_model(f"sparse_rcnn_{backbone}", num_classes=3, **kw)


@pytest.mark.parametrize("backbone", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_train_step_and_inference_at_odd_sizes(backbone, odd_batch, one_thread):
    images, targets, sizes = odd_batch()
    model = _small(backbone)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {f"loss_{k}_s{i}" for k in ("cls", "bbox", "iou") for i in range(6)}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.body.stages[0].patch_embed.proj.weight.grad.abs().sum() > 0
    # the learned proposals learn: boxes through the first stage's regression, features through all
    assert model.init_proposal_bboxes.weight.grad.abs().sum() > 0
    assert model.init_proposal_features.weight.grad.abs().sum() > 0
    assert all(s.fc_reg.weight.grad.abs().sum() > 0 for s in model.stages)
    model.eval()
    with torch.no_grad():
        out = model(images)
    for det, (h, w) in zip(out, sizes):
        assert det["boxes"].shape == (20, 4) and det["scores"].shape == (20,)  # top num_proposals, no NMS
        assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h
        assert det["labels"].min() >= 0 and det["labels"].max() < 3
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_images_without_objects_train_towards_background(odd_batch, one_thread):
    images, empty, _ = odd_batch(n=0)
    model = _small(min_size=64, max_size=64)

    def top_score():
        model.eval()
        with torch.no_grad():
            return max(float(d["scores"].max()) for d in model(images))

    before = top_score()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for _ in range(3):
        model.train()
        losses = model(images, empty)
        assert all(torch.isfinite(v) for v in losses.values())
        assert all(losses[f"loss_{k}_s{i}"] == 0 for k in ("bbox", "iou") for i in range(6))
        assert all(losses[f"loss_cls_s{i}"] > 0 for i in range(6))  # nothing matched: all background
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert top_score() < before


def test_bad_input_is_named():
    model = _small().eval()
    with pytest.raises(ValueError, match=r"image 0 is 1x500 \(H x W\): resized .* 0x101"):
        model([torch.rand(3, 1, 500)])
    with pytest.raises(ValueError, match="image 0 is 0x10"):
        model([torch.rand(3, 0, 10)])
    model.train()
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 20, 20)])


def test_loss_falls_on_a_few_training_images(shapes_fit, one_thread):
    """From scratch, 2 shapes images (64 px), 16 AdamW steps (lr 2e-4, clip 1), 30 proposals: the total loss
    of the six stages falls by 30 % or more (measured: 66.3 averaged over the first 4 steps, 33.6 over the last 4).
    Sparse R-CNN learns slowly from scratch: its mAP on these images is still 0 after 32 steps, so the
    test asks for the loss only (docs/detectors_cascade_sparse.md)."""
    torch.manual_seed(0)
    fit = shapes_fit(2)
    model = _small(min_size=64, max_size=64, drop_path_rate=0.0, num_proposals=30)
    losses = fit.train(model, 16, 2e-4, 1.0)
    assert all(v == v and abs(v) < 1e4 for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses


@pytest.mark.slow  # 53 s; test_loss_falls_on_a_few_training_images keeps Sparse R-CNN learning in the default suite
def test_zero_regressors_fit_a_few_training_images(shapes_fit, one_thread):
    """With the box regressors starting at zero (the built-in shapes' preset), every stage starts by keeping
    its boxes, and 2 images are fitted: measured box mAP 12.2, mAP@0.5 39.9 after 32 steps (lr 2e-4, clip 1);
    with the official Xavier start the last stage's boxes collapse and the mAP stays 0."""
    torch.manual_seed(0)
    fit = shapes_fit(2)
    model = _small(min_size=64, max_size=64, drop_path_rate=0.0, num_proposals=30, zero_reg_init=True)
    assert all(float(s.fc_reg.weight.abs().sum()) == 0 for s in model.stages)
    assert fit.score(model)["bbox"] < 1
    fit.train(model, 32, 2e-4, 1.0)
    score = fit.score(model)
    assert score["bbox_50"] > 20, score


def test_recipe_of_the_official_config():
    from pvt.tasks import create_task, resolve_config

    cfg = resolve_config(model="sparse_rcnn_pvt_v2_b2", data="/some/coco")
    assert cfg.task == "detection"
    assert (cfg.lr, cfg.weight_decay, cfg.clip_grad, cfg.epochs, cfg.batch_size) == (2.5e-5 / 1.4, 1e-4, 1.0, 36, 1)
    task = create_task(cfg)
    assert task._crop() is not None and task._sizes()["min_size"] == tuple(range(480, 801, 32))
    assert task._head_options() == {}  # the builder's defaults: the paper's 300 proposals, Xavier regressors
    # the options override the recipe; on the built-in shapes the head's preset applies
    no_crop = resolve_config(model="sparse_rcnn_pvt_v2_b2", data="/c", task_options={"crop": False})
    assert create_task(no_crop)._crop() is None
    shapes = resolve_config(model="sparse_rcnn_pvt_v2_b0")
    from pvt.tasks.detection import SHAPES_HEADS

    preset, options = SHAPES_HEADS["sparse_rcnn"]
    assert all(getattr(shapes, k) == v for k, v in preset.items()) and shapes.task_config.img_size == 64
    assert create_task(shapes)._head_options() == options and create_task(shapes)._crop() is None
    with pytest.raises(ValueError, match="option rois_per_image: Sparse R-CNN .* does not take it"):
        create_task(resolve_config(model="sparse_rcnn_pvt_v2_b0", task_options={"rois_per_image": 8}))
    with pytest.raises(ValueError, match="option num_proposals=0: expected a positive integer"):
        create_task(resolve_config(model="sparse_rcnn_pvt_v2_b0", task_options={"num_proposals": 0}))
    with pytest.raises(ValueError, match="option crop='yes': expected true or false"):
        create_task(resolve_config(model="sparse_rcnn_pvt_v2_b0", task_options={"crop": "yes"}))
    with pytest.raises(ValueError, match="anchor_size: Sparse R-CNN .* has no anchors"):
        create_task(resolve_config(model="sparse_rcnn_pvt_v2_b0", task_options={"anchor_size": 16}))
    cascade = resolve_config(model="cascade_mask_rcnn_pvt_v2_b2", data="/some/coco")
    assert cascade.task == "instance" and (cascade.epochs, cascade.weight_decay, cascade.lr) == (36, 0.05, 1e-4)
    assert create_task(cascade)._crop() is not None and create_task(cascade)._anchor_size() == 32


def _still(model):
    """Zero every stage's box regressor: all deltas 0, so every stage returns the boxes it was given."""
    for s in model.stages:
        torch.nn.init.zeros_(s.fc_reg.weight)
        torch.nn.init.zeros_(s.fc_reg.bias)
    return model


def test_zero_deltas_keep_the_whole_real_image_proposals(odd_batch, one_thread):
    """Box conventions between the stages: the learned proposals start as the whole image, in pixels of the
    resized image (not the padded batch), and zero deltas decode every stage back to its input boxes."""
    images, _, sizes = odd_batch()
    model = _still(_small()).eval()
    with torch.no_grad():
        for det, (h, w) in zip(model(images), sizes):  # back in the original images' pixels
            assert torch.allclose(det["boxes"], torch.tensor([0.0, 0.0, w, h]).expand(20, 4), atol=1e-3)
        batch, _ = model.transform(images)
        assert batch.tensors.shape[-2:] != tuple(batch.image_sizes[0])  # padded to a multiple of 32
        feats = model.backbone(batch.tensors)
        whwh = torch.tensor([[w, h, w, h] for h, w in batch.image_sizes], dtype=torch.float32)
        outs = model._stages(feats, batch.image_sizes, whwh)
    assert len(outs) == 6
    for logits, boxes in outs:
        assert logits.shape == (2, 20, 3)
        for b, (h, w) in zip(boxes, batch.image_sizes):
            assert torch.allclose(b, torch.tensor([0.0, 0.0, w, h]).expand(20, 4), atol=1e-4)
    b = torch.tensor([[3.0, 4.0, 20.0, 30.0], [-5.0, 1.5, 70.0, 9.0]])
    assert torch.allclose(model.coder.decode_single(torch.zeros(2, 4), b), b)
    # deltas (stds 0.5, 0.5, 1, 1): dx = 2 moves the centre by one width, dw = log 2 doubles the width
    moved = model.coder.decode_single(torch.tensor([[2.0, 0.0, math.log(2.0), 0.0]]), b[:1])
    assert torch.allclose(moved, torch.tensor([[11.5, 4.0, 45.5, 30.0]]))


def test_ground_truth_proposals_score_full_map_through_eval(shapes_fit, one_thread):
    """The evaluation path (last stage's sigmoid scores, top-k over proposals x classes, labels 0..K-1 as the
    COCO evaluator maps them, boxes back to the original size): proposals on the ground truth with a confident
    right class score box mAP 100; the same boxes with every label shifted by one score 0."""
    torch.manual_seed(0)
    fit = shapes_fit(2)
    model = _still(_small(min_size=80, max_size=80, num_proposals=8))  # 64 px images resized to 80
    gt = [t["boxes"] for t in fit.targets]

    def initial(whwh):  # proposal j of image i: ground-truth box j (in the resized image), the rest the whole image
        out = whwh[:, None] * torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(len(gt), 8, 1)
        for i, g in enumerate(gt):
            out[i, : len(g)] = g * whwh[i] / 64
        return out

    model._initial_boxes = initial
    last, shift = model.stages[-1], [0]
    forward = last.forward

    def confident(roi_feats, features):
        logits, deltas, feats = forward(roi_feats, features)
        logits = torch.full_like(logits, -8.0)
        for i, t in enumerate(fit.targets):
            logits[i, torch.arange(len(t["labels"])), (t["labels"] + shift[0]) % 3] = 8.0
        return logits, deltas, feats

    last.forward = confident
    assert fit.score(model)["bbox"] == pytest.approx(100.0)
    shift[0] = 1
    assert fit.score(model)["bbox"] == 0.0


def test_losses_vanish_on_the_ground_truth_and_match_it(odd_batch, one_thread):
    """Training conventions: boxes on the ground truth (in a shuffled order) with confident right classes are
    matched to it one-to-one, and their L1 (normalised) and GIoU losses are 0 and the focal loss near 0; the
    whole-image box is charged the L1 of the normalised corners."""
    _, targets, sizes = odd_batch()
    model = _small()
    whwh = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32)
    perm = torch.tensor([3, 0, 2, 1])
    boxes = torch.stack([torch.cat([t["boxes"], whwh[i, None] * torch.tensor([0.0, 0, 1, 1]),
                                    torch.tensor([[1.0, 1.0, 3.0, 3.0]])])[perm] for i, t in enumerate(targets)])
    logits = torch.full((2, 4, 3), -10.0)
    for i, t in enumerate(targets):
        for j, lab in enumerate(t["labels"]):
            logits[i, (perm == j).nonzero()[0, 0], lab] = 10.0
    for i, t in enumerate(targets):
        pred, gt = model.matcher(logits[i], boxes[i], t["boxes"], t["labels"], whwh[i])
        assert sorted(zip(gt.tolist(), pred.tolist())) == [(0, 1), (1, 3)]
    losses = model.losses(logits, boxes, targets, whwh)
    assert float(losses["loss_bbox"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["loss_iou"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["loss_cls"]) < 1e-3
    # one ground-truth box against the whole image: L1 x 5 on corners / (w, h, w, h), divided by 1 match
    h, w = sizes[0]
    one = [{"boxes": targets[0]["boxes"][:1], "labels": targets[0]["labels"][:1]}]
    whole = whwh[:1, None] * torch.tensor([0.0, 0, 1, 1])
    got = model.losses(torch.full((1, 1, 3), -10.0), whole, one, whwh[:1])["loss_bbox"]
    want = 5 * float((targets[0]["boxes"][0] / whwh[0] - torch.tensor([0.0, 0, 1, 1])).abs().sum())
    assert float(got) == pytest.approx(want, rel=1e-5)
