"""Cascade Mask R-CNN (PVT v2 Table 4): the exact parameter counts and GFLOPs of the paper's build, the
cascade's per-stage IoU thresholds and sampling, training and inference at odd sizes, images without
objects, and learning floors (a few training images fitted; held-out images under ``-m slow``)."""

import pytest
import torch

from pvt.dense import create_dense_model
from pvt.dense.cascade_mask_rcnn import STAGE_IOUS, CascadeRoIHeads, CascadeStage

# PAPER_FACTS "Paper Table 4": the counts of the official config rebuilt on mmdet 2.13
PAPER_FACTS = {"pvt_v2_b2": (82_852_466, 787.8, 83, 788), "pvt_v2_b2_li": (80_043_122, 724.6, 80, 725)}
PARTS = {"neck": 2_623_488, "rpn": 593_935, "box_head": 15_618_449, "mask_head": 2_643_280}
BACKBONE = {"pvt_v2_b2": 24_849_856, "pvt_v2_b2_li": 22_040_512}


@pytest.mark.parametrize("backbone", list(PAPER_FACTS))
def test_parameter_counts_are_the_papers(backbone, table4):
    built = table4(f"cascade_mask_rcnn_{backbone}")
    model, n = built.model, built.count
    exact, _, paper_m, _ = PAPER_FACTS[backbone]
    assert paper_m == built.spec.paper_params_m
    built.params_match(exact)
    assert n(model.backbone.body) == BACKBONE[backbone]
    assert n(model.backbone.fpn) == PARTS["neck"] and n(model.rpn) == PARTS["rpn"]
    stages = model.roi_heads.stages
    assert len(stages) == 3  # three separate box heads and three separate mask heads
    for s in stages:
        assert n(s.box_head) + n(s.box_predictor) == PARTS["box_head"]
        assert n(s.mask_head) == PARTS["mask_head"]
        assert s.box_predictor.bbox_pred.out_features == 4 * 80  # class-specific regression
        assert s.box_predictor.cls_score.out_features == 81


@pytest.mark.parametrize("backbone", list(PAPER_FACTS))
def test_gflops_are_table4s(backbone, table4):
    built = table4(f"cascade_mask_rcnn_{backbone}")
    _, facts, _, paper = PAPER_FACTS[backbone]
    assert paper == built.spec.paper_gflops
    built.gflops_match(facts)
    # the box heads' BatchNorm is SyncBN in the official config, which mmcv 1.3 does not count
    assert built.all_flops.flops - built.flops.flops == 3 * 1000 * 4 * 2 * 256 * 7 * 7  # heads x RoIs x norms x 2


def test_stage_thresholds_and_sampling_by_hand():
    heads = CascadeRoIHeads([CascadeStage(3, iou, 1.0, (0.1, 0.1, 0.2, 0.2)) for iou in STAGE_IOUS], 3,
                            box_pool=None, mask_pool=None, rois_per_image=512)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoU with the ground truth: 0.55, 0.65, 0.75, 0.3
    proposals = torch.tensor([[0.0, 0.0, 10.0, 5.5], [0.0, 0.0, 10.0, 6.5], [0.0, 0.0, 10.0, 7.5],
                              [0.0, 0.0, 10.0, 3.0]])
    positives = {}
    for iou in STAGE_IOUS:
        rois, labels, matched, is_gt = heads.sample(proposals, gt, torch.tensor([2]), iou)
        assert len(rois) == 5 and is_gt.sum() == 1 and torch.equal(rois[is_gt][0], gt[0])  # the gt joins
        assert set(labels.tolist()) <= {2, 3}  # class 2, or background (= num_classes)
        assert torch.equal(matched >= 0, labels == 2)
        positives[iou] = sorted(round(float(r[3]), 1) for r in rois[labels == 2])
    assert positives == {0.5: [5.5, 6.5, 7.5, 10.0], 0.6: [6.5, 7.5, 10.0], 0.7: [7.5, 10.0]}
    # at most 25 % positives: 8 RoIs from 10 positives and 10 negatives -> 2 + 6
    small = CascadeRoIHeads(heads.stages, 3, None, None, rois_per_image=8)
    many = torch.cat([gt.repeat(9, 1), torch.tensor([[20.0, 20.0, 30.0, 30.0]]).repeat(10, 1)])
    _, labels, _, _ = small.sample(many, gt, torch.tensor([0]), 0.5)
    assert (labels == 0).sum() == 2 and (labels == 3).sum() == 6
    # no ground truth: every RoI is a negative
    _, labels, matched, is_gt = heads.sample(proposals, gt[:0], torch.tensor([], dtype=torch.int64), 0.5)
    assert (labels == 3).all() and (matched == -1).all() and not is_gt.any()


def _small(backbone="pvt_v2_b0", **kw):
    # few RoIs, proposals and detections: the box and mask heads' cost grows with them
    kw = {"min_size": 67, "max_size": 101, "anchor_size": 16, "rois_per_image": 16, "test_proposals": 20,
          "detections_per_img": 10, **kw}
    return create_dense_model(f"cascade_mask_rcnn_{backbone}", num_classes=3, **kw)


def test_each_stage_refines_the_previous_stages_boxes(odd_batch, one_thread):
    images, targets, _ = odd_batch()
    model = _small()
    given, drawn = [], []

    def sample(proposals, *args):
        given.append(proposals)
        drawn.append(original(proposals, *args))
        return drawn[-1]

    original = model.roi_heads.sample
    model.roi_heads.sample = sample
    model.train()
    model(images[:1], targets[:1])
    assert len(given) == 3 and all(len(d[0]) == 16 for d in drawn)
    # stages 2 and 3 get the previous stage's sampled RoIs, regressed, less the ground-truth boxes among them
    for i in (1, 2):
        rois, _, _, is_gt = drawn[i - 1]
        assert len(given[i]) == len(rois) - int(is_gt.sum())
        assert not torch.equal(given[i], rois[~is_gt])  # moved by the regression
        assert (given[i][:, 2] <= 91).all() and (given[i][:, 3] <= 67).all()  # clipped to the image


@pytest.mark.parametrize("backbone", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_train_step_and_inference_at_odd_sizes(backbone, odd_batch, one_thread):
    images, targets, sizes = odd_batch()
    model = _small(backbone)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {f"loss_{k}_s{i}" for k in ("cls", "box", "mask") for i in range(3)} | {
        "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(losses[f"loss_box_s{i}"] > 0 for i in range(3))  # the gt RoIs are positives of every stage
    sum(losses.values()).backward()
    assert model.backbone.body.body.stages[0].patch_embed.proj.weight.grad.abs().sum() > 0
    for stage in model.roi_heads.stages:
        assert stage.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
        assert stage.mask_head[1].mask_fcn_logits.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    for det, (h, w) in zip(out, sizes):
        n = len(det["boxes"])
        assert 0 < n <= 10 and det["scores"].shape == (n,) and det["masks"].shape == (n, 1, h, w)
        assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h
        assert det["labels"].min() >= 0 and det["labels"].max() < 3
        assert 0 <= det["masks"].min() and det["masks"].max() <= 1
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_images_without_objects_train(odd_batch, one_thread):
    images, empty, _ = odd_batch(n=0)
    model = _small()
    model.train()
    losses = model(images, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    for i in range(3):  # only negatives: a background class loss, nothing to regress or segment
        assert losses[f"loss_cls_s{i}"] > 0 and losses[f"loss_box_s{i}"] == 0 and losses[f"loss_mask_s{i}"] == 0
    sum(losses.values()).backward()
    assert model.roi_heads.stages[0].box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_bad_input_is_named():
    model = _small().eval()
    with pytest.raises(ValueError, match=r"image 0 is 1x500 \(H x W\): resized .* 0x101"):
        model([torch.rand(3, 1, 500)])
    with pytest.raises(ValueError, match="image 1 is 0x10"):
        model([torch.rand(3, 20, 20), torch.rand(3, 0, 10)])
    with pytest.raises(ValueError, match=r"expected a \(3, H, W\) tensor"):
        model([torch.rand(20, 20)])
    model.train()
    with pytest.raises(ValueError, match="needs targets with boxes, labels and masks"):
        model([torch.rand(3, 20, 20)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])


def test_fits_a_few_training_images(shapes_fit, one_thread):
    """From scratch, 2 shapes images (64 px), 32 AdamW steps (lr 5e-4, clip 10), 16 RoIs per image: box and
    mask mAP on those images far above the untrained model's 0. After 16 steps the fit is still taking off,
    and where it then stands differs between machines with the same seed and one thread (box / mask mAP
    38.8 / 32.9 measured when this test was written on an AVX-512 Zen 5; 10.0 / 13.3 on an AVX2 Zen 3, 0.0
    in another Zen 3 run), so the floor is checked after 32 (that Zen 3: 30.4 / 47.9 after 24 steps,
    46.3 / 54.4 after 32; ~50 CPU-seconds on one thread)."""
    torch.manual_seed(0)
    fit = shapes_fit(2, masks=True)
    model = _small(min_size=64, max_size=64, drop_path_rate=0.0, test_proposals=50, detections_per_img=20)
    before = fit.score(model)
    losses = fit.train(model, 32, 5e-4, 10.0)
    after = fit.score(model)
    assert all(v == v and abs(v) < 1e4 for v in losses) and losses[-1] < losses[0]
    assert before["bbox"] < 2 and before["segm"] < 2
    assert after["bbox"] > 15 and after["segm"] > 15, (before, after)


@pytest.mark.slow
def test_learns_held_out(tmp_path):
    """The shapes preset through the engine (``pvt train --model cascade_mask_rcnn_pvt_v2_b0``, with a
    shorter schedule): held-out box and mask mAP far above the untrained model's. The floor of 10 is a
    guess not yet checked by a measured run (docs/detectors_cascade_sparse.md)."""
    from torch.utils.data import DataLoader

    from pvt.engine.trainer import Trainer
    from pvt.tasks import create_task, get_task, resolve_config

    cfg = resolve_config(model="cascade_mask_rcnn_pvt_v2_b0", output=str(tmp_path / "runs"),
                         data_dir=str(tmp_path / "cache"), epochs=2, warmup_epochs=0.25, seed=0, threads=1,
                         task_options={"num_train": 512, "num_val": 50, "lr_steps": 2})
    task = get_task(cfg.task)(cfg)
    _, val = task.build_datasets()
    before = task.evaluate(task.build_model(), DataLoader(val, batch_size=8, collate_fn=task.collate_fn),
                           torch.device("cpu"))
    res = Trainer(cfg, create_task(cfg), quiet=True).fit()
    best = max(res.metrics, key=lambda r: r["val_segm_mAP"])
    assert before["bbox_mAP"] < 1 and before["segm_mAP"] < 1
    assert best["val_bbox_mAP"] > 10 and best["val_segm_mAP"] > 10
