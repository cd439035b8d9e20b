"""ATSS and GFL (paper Table 4): parameter counts and GFLOPs against the paper, the neck and head as the
official configs build them, the ATSS assigner on a hand-made case, QFL / DFL against hand-computed
values, the detection contract at odd sizes and without objects, and learning floors (a fixed batch in
the default suite; the held-out built-in split under ``slow``)."""

import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

import pvt
from pvt.dense import HEADS, create_dense_model, get_dense_spec
from pvt.dense.assigners import atss_assign
from pvt.dense.losses import (
    centerness_target,
    distribution_expectation,
    distribution_focal_loss,
    paired_iou,
    quality_focal_loss,
)
from pvt.dense.one_stage import _valid_flags, grid_anchors

HEADS_UNDER_TEST = ("atss", "gfl")

# PAPER_FACTS "Paper Table 4": the counts the official configs reach (80 classes)
PAPER_FACTS_PARAMS = {
    "atss_pvt_v2_b2": 32_965_402, "atss_pvt_v2_b2_li": 30_156_058,
    "gfl_pvt_v2_b2": 33_110_617, "gfl_pvt_v2_b2_li": 30_301_273,
}
NECK_PARAMS = 3_196_928
HEAD_PARAMS = {"atss": 4_918_618, "gfl": 5_063_833}


def _small(name: str, **kw):
    return create_dense_model(name, num_classes=3, min_size=64, max_size=107, anchor_size=16, **kw)


# ---------------------------------------------------------------- the paper's figures
@pytest.mark.parametrize("name", sorted(PAPER_FACTS_PARAMS))
def test_param_counts_match_paper_facts(name):
    with torch.device("meta"):
        model = create_dense_model(name)
    total = sum(p.numel() for p in model.parameters())
    assert total == PAPER_FACTS_PARAMS[name]
    head = name.split("_pvt_")[0]
    assert sum(p.numel() for p in model.head.parameters()) == HEAD_PARAMS[head]
    assert sum(p.numel() for p in model.backbone.fpn.parameters()) == NECK_PARAMS
    assert round(total / 1e6) == get_dense_spec(name).paper_params_m  # the paper prints 33 / 30


@pytest.mark.parametrize("name", sorted(PAPER_FACTS_PARAMS))
def test_gflops_match_table4(name):
    spec = get_dense_spec(name)
    with torch.device("meta"):  # shapes only
        model = create_dense_model(name)
    assert spec.head.flops_input == (800, 1280) and spec.head.flops_method == "forward_dummy"
    got = pvt.count_flops(model, spec.head.flops_input, method=spec.head.flops_method).gflops
    assert got == pytest.approx(spec.paper_gflops, rel=0.01)


def test_zoo_rows():
    for name in HEADS_UNDER_TEST:
        head = HEADS[name]
        assert (head.task, head.num_classes, head.anchor_size, head.multiscale) == ("detection", 80, 64, (480, 800))
        # the official 3x configs' AdamW and their crop policy (the DETR / Sparse R-CNN augmentation)
        assert dict(head.recipe) == {"epochs": 36, "weight_decay": 0.05, "crop": True}
    from pvt.tasks import resolve_config

    cfg = resolve_config(model="gfl_pvt_v2_b2", data="/some/coco")  # the name implies the task and recipe
    assert (cfg.task, cfg.epochs, cfg.lr, cfg.weight_decay) == ("detection", 36, 1e-4, 0.05)
    from pvt.tasks.detection import DetectionTask

    task = DetectionTask(cfg)
    assert task._sizes() == {"min_size": tuple(range(480, 801, 32)), "max_size": 1333}  # multi-scale 480-800
    assert task._anchor_size() == 64
    assert task._crop() is not None and DetectionTask(resolve_config(model="gfl_pvt_v2_b0"))._crop() is None
    assert DetectionTask(resolve_config(model="atss_pvt_v2_b0"))._anchor_size() == 16  # the built-in shapes


# ---------------------------------------------------------------- structure and initialisation
def test_neck_p6_from_p5_output_without_relu():
    model = _small("atss_pvt_v2_b0").eval()
    fpn = model.backbone.fpn
    seen = {}
    fpn.extra_blocks.p6.register_forward_hook(lambda m, i, o: seen.update(p6_in=i[0], p6_out=o))
    fpn.extra_blocks.p7.register_forward_hook(lambda m, i, o: seen.update(p7_in=i[0]))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = model.backbone(x)
    assert list(out) == ["0", "1", "2", "p6", "p7"]
    assert torch.equal(seen["p6_in"], out["2"])  # P6 from the P5 output, not C5 (256 channels on B0 too)
    assert torch.equal(seen["p7_in"], seen["p6_out"]) and (seen["p7_in"] < 0).any()  # no ReLU before P7
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]


@pytest.mark.parametrize("name", ["atss_pvt_v2_b0", "gfl_pvt_v2_b0"])
def test_head_layers_and_init(name):
    torch.manual_seed(0)
    model = create_dense_model(name, num_classes=80)
    head = model.head
    for tower in (head.cls_convs, head.reg_convs):
        convs = [m for m in tower if isinstance(m, nn.Conv2d)]
        norms = [m for m in tower if isinstance(m, nn.GroupNorm)]
        assert len(convs) == 4 and all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
        assert len(norms) == 4 and all(n.num_groups == 32 for n in norms)
        assert all(c.weight.std().item() == pytest.approx(0.01, rel=0.05) for c in convs)
    assert len(head.scales) == 5 and all(s.scale.item() == 1.0 for s in head.scales)
    assert head.cls_logits.out_channels == 80
    assert head.bbox_pred.out_channels == (4 if name.startswith("atss") else 68)  # GFL: 4 x (16 + 1)
    assert (head.centerness is not None) == name.startswith("atss")
    prior = torch.sigmoid(head.cls_logits.bias)
    assert torch.allclose(prior, torch.full_like(prior, 0.01))
    assert head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(head.bbox_pred.bias) == 0
    # the FPN is Xavier-initialised, as the official configs
    conv = model.backbone.fpn.extra_blocks.p6
    bound = math.sqrt(6 / (2 * 256 * 9))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound


def test_anchors_exact_strides_and_valid_flags():
    # one anchor per location, centred on (j * s, i * s), side 8 x stride by default
    model = create_dense_model("atss_pvt_v2_b0", num_classes=3)
    assert model.anchor_sizes == (64, 128, 256, 512, 1024)
    a = grid_anchors([(100, 167), (7, 11)], [8, 128], [64, 1024])
    assert a[0].shape == (100 * 167, 4) and a[0][0].tolist() == [-32, -32, 32, 32]
    assert a[0][1].tolist() == [-24, -32, 40, 32] and a[0][167].tolist() == [-32, -24, 32, 40]
    assert a[1][-1].tolist() == [10 * 128 - 512, 6 * 128 - 512, 10 * 128 + 512, 6 * 128 + 512]  # exact 128
    # a 40 x 70 image in a batch padded to 96 x 128: anchors past its own 64 x 96 padding are left out
    valid = _valid_flags([(12, 16), (6, 8)], [8, 16], (40, 70), 32, torch.device("cpu"))
    grid0 = valid[: 12 * 16].reshape(12, 16)
    assert grid0[:8, :12].all() and not grid0[8:].any() and not grid0[:, 12:].any()
    assert valid[12 * 16:].reshape(6, 8)[:4, :6].all() and int(valid.sum()) == 8 * 12 + 4 * 6


def test_backbone_loads_classification_checkpoint(tmp_path):
    from pvt.weights.checkpoint import save_model

    clf = pvt.create_model("pvt_v1_tiny", num_classes=10)
    path = tmp_path / "tiny.safetensors"
    save_model(clf, path, variant="pvt_v1_tiny")
    ref = {k: v for k, v in clf.state_dict().items() if not k.startswith("head.")}
    for head in HEADS_UNDER_TEST:
        got = create_dense_model(f"{head}_pvt_v1_tiny", pretrained=path).backbone.body.body.state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)  # the classifier dropped


# ---------------------------------------------------------------- the ATSS assigner
def _two_level_anchors():
    # level 1: 4 x 4 anchors of side 16 at stride 8 (centres 0, 8, 16, 24); level 2: 2 x 2 of side 32 at 16
    return torch.cat(grid_anchors([(4, 4), (2, 2)], [8, 16], [16, 32]))


def test_atss_assigner_hand_made_case():
    anchors = _two_level_anchors()
    a = torch.tensor([[2.0, 3.0, 18.0, 15.0]])  # centre (10, 9)
    # top 3 by centre distance: level 1 centres (8, 8), (16, 8), (8, 16) with IoU 168/280 = 0.6,
    # 120/328 = 0.366, 98/350 = 0.28; level 2 centres (16, 16), (16, 0), (0, 16) with IoU 0.1875, 0.1875,
    # 0.160; mean 0.297 + std 0.167 = 0.464: only (8, 8) = anchor 5 passes, and its centre is inside
    got = atss_assign(anchors, [16, 4], a, topk=3)
    assert (got >= 0).nonzero().flatten().tolist() == [5] and got[5] == 0
    # a second box whose candidates give (8, 8) an IoU of 210/270 = 0.778 (threshold 0.566): the
    # anchor goes to the box it overlaps most
    d = torch.tensor([[1.5, 1.0, 15.5, 17.0]])
    got = atss_assign(anchors, [16, 4], torch.cat([a, d]), topk=3)
    assert (got >= 0).nonzero().flatten().tolist() == [5] and got[5] == 1
    # topk larger than a level: every anchor of that level is a candidate (no error)
    assert atss_assign(anchors, [16, 4], a, topk=9)[5] == 0
    # no boxes: every anchor negative
    assert (atss_assign(anchors, [16, 4], torch.zeros(0, 4)) == -1).all()
    with pytest.raises(ValueError, match="num_per_level sums to 19"):
        atss_assign(anchors, [15, 4], a)


def test_atss_assigner_needs_the_centre_inside():
    anchors = _two_level_anchors()
    strip = torch.tensor([[8.5, 0.0, 14.0, 14.0]])  # centre (11.25, 7); no anchor centre has 8.5 < x < 14
    # its 3 nearest anchors per level: (8, 8), (16, 8), (8, 0) on level 1 with IoU 77/256 = 0.301 (twice,
    # both contain it) and 44/289 = 0.152; three side-32 anchors containing it on level 2 (77/1024 = 0.075)
    cand = torch.tensor([5, 6, 1, 17, 19, 16])
    ious = box_iou(anchors[cand], strip)[:, 0]
    assert ious.tolist() == pytest.approx([77 / 256, 77 / 256, 44 / 289] + [77 / 1024] * 3)
    assert ious[0] > ious.mean() + ious.std()  # anchors 5 and 6 pass the IoU threshold (0.274) ...
    assert (atss_assign(anchors, [16, 4], strip, topk=3) == -1).all()  # ... but their centres are outside
    shifted = strip + torch.tensor([[-1.0, 0.0, -1.0, 0.0]])  # x from 7.5 to 13: anchor 5's centre inside
    assert (atss_assign(anchors, [16, 4], shifted, topk=3) >= 0).nonzero().flatten().tolist() == [5]


# ---------------------------------------------------------------- losses
def test_quality_focal_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 2])  # a positive of class 0 with quality 0.8; a negative (label = C)
    quality = torch.tensor([0.8, 0.5])  # the negative's quality is ignored
    got = quality_focal_loss(logits, labels, quality, beta=2.0)
    # positive: BCE(0 -> 0.8) = ln 2, x |0.8 - 0.5|^2; class 1: ln 2 x 0.5^2
    pos = math.log(2) * 0.09 + math.log(2) * 0.25
    # negative: BCE(ln 3 -> 0) = ln 4, x 0.75^2; class 1: ln 2 x 0.5^2
    neg = math.log(4) * 0.5625 + math.log(2) * 0.25
    assert got.tolist() == pytest.approx([pos, neg], rel=1e-6)
    # at the target the loss vanishes
    exact = quality_focal_loss(torch.tensor([[math.log(4.0)]]), torch.tensor([0]), torch.tensor([0.8]))
    assert float(exact) == pytest.approx(0.0, abs=1e-7)


def test_distribution_focal_loss_and_expectation_hand_computed():
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 1.0]]))  # p = .25 .5 .25
    target = torch.tensor([0.75, 1.0, 0.3])
    got = distribution_focal_loss(logits, target)
    expected = [0.25 * -math.log(0.25) + 0.75 * -math.log(0.5), -math.log(0.5), math.log(3)]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    four_sides = torch.log(torch.tensor([1.0, 2.0, 1.0])).repeat(4)
    assert distribution_expectation(four_sides[None], reg_max=2)[0].tolist() == pytest.approx([1.0] * 4)
    assert centerness_target(torch.tensor([[5.0, 5.0]]), torch.tensor([[0.0, 0.0, 10.0, 20.0]])).item() == \
        pytest.approx(math.sqrt(5 / 15))
    assert paired_iou(torch.tensor([[0.0, 0, 16, 16]]), torch.tensor([[2.0, 3, 18, 15]])).item() == \
        pytest.approx(168 / 280)


# ---------------------------------------------------------------- the detection contract
def _targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0], [60.0, 5.0, 95.0, 30.0]]),
             "labels": torch.tensor([0, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


@pytest.mark.parametrize("name, p3", [("atss_pvt_v2_b0", (9, 13)), ("gfl_pvt_v1_tiny", (8, 12))])
def test_train_step_and_eval_at_odd_sizes(name, p3):
    model = _small(name)
    images = [torch.rand(3, 67, 101), torch.rand(3, 45, 38)]  # the second without objects
    losses = model(images, _targets())
    keys = {"loss_cls", "loss_bbox", "loss_centerness" if name.startswith("atss") else "loss_dfl"}
    assert set(losses) == keys
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["loss_bbox"].item() > 0  # the first image has positives
    sum(losses.values()).backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    model.score_thresh = 0.0  # an untrained model scores ~0.01: keep everything to check the format
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (len(det["scores"]), 4) and 0 < len(det["scores"]) <= 100
        assert det["labels"].min() >= 0 and det["labels"].max() < 3
        assert (det["boxes"][:, 2] <= img.shape[2] + 1e-3).all() and (det["boxes"][:, 3] <= img.shape[1] + 1e-3).all()
    with torch.no_grad():
        dummy = model.forward_dummy(torch.rand(1, 3, 67, 101))
    # v2 maps are ceil-sized, v1's (non-overlapping patches) floor-sized; P6 and P7 halve, rounding up
    sizes = [p3]
    for _ in range(4):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    assert [tuple(c.shape[-2:]) for c, _, _ in dummy] == sizes


@pytest.mark.parametrize("name", ["atss_pvt_v2_b0", "gfl_pvt_v2_b0"])
def test_no_objects_and_a_few_steps_stay_finite(name):
    model = _small(name)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 80)]
    for step in range(4):
        losses = model(images, empty if step % 2 == 0 else _targets())
        assert all(torch.isfinite(v) for v in losses.values()), (step, losses)
        if step % 2 == 0:  # all negatives: only the classification loss, the others exactly zero
            assert losses["loss_cls"].item() > 0 and losses["loss_bbox"].item() == 0
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_inputs_are_named():
    model = _small("atss_pvt_v2_b0")
    img = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match="needs targets"):
        model(img)
    with pytest.raises(ValueError, match=r"labels'\] must lie in 0\.\.2"):
        model(img, [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="degenerate box"):
        model(img, [{"boxes": torch.tensor([[5.0, 1, 5, 9]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match=r"too small: this model needs height and width of at least"):
        model.forward_dummy(torch.rand(1, 3, 16, 16))  # the backbone's own message


# ---------------------------------------------------------------- learning
def _memorise(name: str, steps: int, lr: float, tmp_path):
    """Box mAP / mAP@0.5 on 8 built-in shapes images (64 px) before and after ``steps`` AdamW updates on
    them (5 warm-up steps, clip 10): the gradients reach every part and the detector fits."""
    from pvt.data.coco import CocoDataset
    from pvt.data.synthetic import make_shapes_dataset
    from pvt.tasks.metrics import coco_map, detections_to_coco

    root = make_shapes_dataset(tmp_path / "s", num_train=8, num_val=1, size=64, seed=0) / "coco"
    ds = CocoDataset(root / "train", root / "annotations" / "instances_train.json")
    images, targets = zip(*[ds[i] for i in range(8)])
    model = create_dense_model(name, num_classes=3, min_size=64, max_size=64, anchor_size=16)

    def score():
        model.eval()
        with torch.no_grad():
            dets = model(list(images))
        res = [r for t, d in zip(targets, dets) for r in detections_to_coco(int(t["image_id"]), d, ds.cat_ids)]
        m = coco_map(ds.coco(), res, "bbox", [int(t["image_id"]) for t in targets])
        return m["mAP"], m["mAP_50"]

    train_targets = [{k: v for k, v in t.items() if k != "image_id"} for t in targets]
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4)
    before = score()
    for i in range(1, steps + 1):
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, i / 5)
        loss = sum(model(list(images), train_targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10)
        opt.step()
    return before, score()


def test_atss_learns(tmp_path):
    """ATSS-B0 from scratch fits 8 shapes images in 20 steps (a few CPU-seconds)."""
    (before, _), (after, after50) = _memorise("atss_pvt_v2_b0", 20, 5e-4, tmp_path)
    assert before < 1
    assert after > 50 and after50 > 80


def test_gfl_learns(tmp_path):
    """GFL-B0 from scratch fits 8 shapes images in 30 steps (a few CPU-seconds)."""
    (before, _), (after, after50) = _memorise("gfl_pvt_v2_b0", 30, 5e-4, tmp_path)
    assert before < 1
    assert after > 40 and after50 > 65


def _held_out(tmp_path, model: str) -> tuple[dict[str, float], float, float]:
    """The built-in preset through the engine (``pvt train --model <model>`` without ``--data``: 64 px
    shapes, 1024 training images, batch 8, 8 epochs, lr 5e-4, clip 10, anchors from 16 px): the untrained
    model's scores on the 50 held-out images, and the best held-out box mAP / mAP@0.5 of the run."""
    from torch.utils.data import DataLoader

    from pvt.engine.trainer import Trainer
    from pvt.tasks import create_task, get_task, resolve_config

    cfg = resolve_config(model=model, output=str(tmp_path / "runs"), data_dir=str(tmp_path / "cache"), seed=0,
                         task_options={"num_train": 1024, "num_val": 50, "shapes_size": 64})
    assert (cfg.task, cfg.task_config.img_size, cfg.epochs, cfg.lr, cfg.clip_grad) == ("detection", 64, 8, 5e-4, 10.0)
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task)(cfg)
    _, val = task.build_datasets()
    untrained = task.evaluate(task.build_model(), DataLoader(val, batch_size=8, collate_fn=task.collate_fn),
                              torch.device("cpu"))
    res = Trainer(cfg, create_task(cfg), quiet=True).fit()
    return untrained, max(r["val_bbox_mAP"] for r in res.metrics), max(r["val_bbox_mAP_50"] for r in res.metrics)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["atss_pvt_v2_b0", "gfl_pvt_v2_b0"])
def test_learns_held_out(tmp_path, model):
    """ATSS-B0 / GFL-B0 with the built-in preset: held-out box mAP far above the untrained model's 0 (no
    detection above 0.05). Figures and CPU time: docs/detectors_atss_gfl.md."""
    untrained, best, best50 = _held_out(tmp_path, model)
    assert untrained["bbox_mAP"] < 1
    assert best > 25 and best50 > 45
