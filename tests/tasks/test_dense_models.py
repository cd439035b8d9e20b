"""The dense-prediction models: parameter counts against the paper (Tables 3 and 5), Semantic FPN
GFLOPs (Table 5), the RetinaNet P6 trap, Xavier init, pre-trained backbones, odd input sizes."""

import math

import pytest
import torch

import pvt
from pvt.dense import DENSE_MODELS, HEADS, create_dense_model, get_dense_spec, list_dense_models

# torchvision-built counts (M) measured for PAPER_FACTS; the paper prints them rounded to 0.1
MEASURED = {
    "pvt_v2_b0": (12.947, 23.450, 7.545),
    "pvt_v2_b1": (23.746, 33.668, 17.763),
    "pvt_v2_b2": (35.100, 45.022, 29.117),
    "pvt_v2_b2_li": (32.290, 42.212, 26.307),
    "pvt_v2_b3": (54.976, 64.897, 48.992),
    "pvt_v2_b4": (72.293, 82.215, 66.310),
    "pvt_v2_b5": (91.693, 101.615, 85.710),
    "pvt_v1_tiny": (22.966, 32.888, 16.983),
    "pvt_v1_small": (34.223, 44.145, 28.240),
    "pvt_v1_medium": (None, None, 47.962),
    "pvt_v1_large": (None, None, 65.123),
}
FAST = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li")


def _count_m(name: str) -> float:
    with torch.device("meta"):  # shapes only: fast at any size
        model = create_dense_model(name)
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize(
    "backbone", [pytest.param(b, marks=() if b in FAST else pytest.mark.slow) for b in MEASURED]
)
@pytest.mark.parametrize("head_index, head", list(enumerate(["retinanet", "mask_rcnn", "semfpn"])))
def test_param_counts_match_paper(backbone, head_index, head):
    spec = get_dense_spec(f"{head}_{backbone}")
    expected = MEASURED[backbone][head_index]
    if spec.paper_params_m is None:
        pytest.skip("the paper has no entry")
    got = _count_m(spec.name)
    assert got == pytest.approx(expected, abs=0.001)
    assert abs(got - spec.paper_params_m) < 0.06  # the paper rounds 12.947 -> 13.0
    assert spec.default_num_classes == (150 if head == "semfpn" else 80)


@pytest.mark.parametrize("backbone, paper", [("pvt_v2_b0", 25.0), ("pvt_v2_b2", 45.8)])
def test_semantic_fpn_gflops_match_table5(backbone, paper):
    model = create_dense_model(f"semfpn_{backbone}")
    got = pvt.count_flops(model, 512).gflops
    assert got == pytest.approx(paper, rel=0.03)
    assert got == pytest.approx(get_dense_spec(f"semfpn_{backbone}").paper_gflops, rel=0.03)


def test_registry_names_and_errors():
    names = list_dense_models()
    assert len(names) == len(HEADS) * len(pvt.list_models()) == len(DENSE_MODELS)
    assert "retinanet_pvt_v2_b2_li" in names and "semfpn_pvt_v1_large" in names
    assert list_dense_models("mask_rcnn_*", task="instance") == [n for n in names if n.startswith("mask_rcnn_")]
    assert list_dense_models(task="segmentation")[0].startswith("semfpn_")
    with pytest.raises(ValueError, match="did you mean retinanet_pvt_v2_b"):
        create_dense_model("retinanet_pvt_v2_bx")
    with pytest.raises(ValueError, match="did you mean mask_rcnn_pvt_v2_b0"):
        get_dense_spec("maskrcnn_pvt_v2_b0")  # the older head name is gone; the error names the current one


def test_retinanet_p6_comes_from_c5_even_when_channels_match():
    # B0's C5 has 256 channels = the FPN width: torchvision would silently take P6 from P5
    model = create_dense_model("retinanet_pvt_v2_b0", num_classes=3, min_size=64, max_size=64).eval()
    neck = model.backbone
    assert neck.body.channels == [64, 160, 256]
    seen = {}
    neck.fpn.extra_blocks.p6.register_forward_hook(lambda m, i, o: seen.update(p6_in=i[0]))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        c5 = neck.body(x)["c5"]
        out = neck(x)
    assert list(out) == ["0", "1", "2", "p6", "p7"]
    assert torch.equal(seen["p6_in"], c5)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert len(model.anchor_generator.sizes) == 5 and model.anchor_generator.num_anchors_per_location() == [9] * 5


def test_anchor_size_option():
    with torch.device("meta"):
        ret = create_dense_model("retinanet_pvt_v2_b0")
        small = create_dense_model("retinanet_pvt_v2_b0", anchor_size=16)
        mrcnn = create_dense_model("mask_rcnn_pvt_v2_b0", anchor_size=8)
    # the paper's anchors by default: 32..512 x octaves 2^0, 2^(1/3), 2^(2/3)
    assert ret.anchor_generator.sizes == ((32, 40, 50), (64, 80, 101), (128, 161, 203), (256, 322, 406),
                                          (512, 645, 812))
    assert small.anchor_generator.sizes[0] == (16, 20, 25) and small.anchor_generator.sizes[-1] == (256, 322, 406)
    assert mrcnn.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert create_dense_model("mask_rcnn_pvt_v2_b0").rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    # anchors are not parameters: the counts of Table 3 do not move
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in ret.parameters())
    for bad in (0, 3, 12.5, "16", True, 2048):
        with pytest.raises(ValueError, match=r"anchor_size=.*expected an integer number of pixels in 4\.\.1024"):
            create_dense_model("retinanet_pvt_v2_b0", anchor_size=bad)


def test_new_layers_are_xavier_initialised():
    model = create_dense_model("semfpn_pvt_v2_b0")
    conv = model.backbone.fpn.layer_blocks[0][0]
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = math.sqrt(6 / (fan_in + fan_out))
    w = conv.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def test_backbone_loads_classification_checkpoint(tmp_path):
    from pvt.weights.checkpoint import save_model

    clf = pvt.create_model("pvt_v2_b0", num_classes=10)
    path = tmp_path / "b0.safetensors"
    save_model(clf, path, variant="pvt_v2_b0")
    det = create_dense_model("retinanet_pvt_v2_b0", pretrained=path)  # the 10-class head is dropped
    seg = create_dense_model("semfpn_pvt_v2_b0", pretrained=path)
    ref = {k: v for k, v in clf.state_dict().items() if not k.startswith("head.")}
    for model in (det, seg):
        got = model.backbone.body.body.state_dict()
        assert set(got) == set(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref)


def _targets(sizes, masks=False):
    out = []
    for h, w in sizes:
        t = {"boxes": torch.tensor([[5.0, 7.0, 40.0, 50.0], [30.0, 20.0, w - 2.0, h - 3.0]]),
             "labels": torch.tensor([0, 2])}
        if masks:
            m = torch.zeros(2, h, w, dtype=torch.uint8)
            m[0, 7:50, 5:40] = 1
            m[1, 20:h - 3, 30:w - 2] = 1
            t["masks"] = m
        out.append(t)
    return out


@pytest.mark.parametrize("head", ["retinanet", "mask_rcnn"])
def test_detector_train_step_and_inference_at_odd_sizes(head):
    model = create_dense_model(f"{head}_pvt_v2_b0", num_classes=3, min_size=67, max_size=101)
    sizes = [(67, 91), (75, 61)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    model.train()
    losses = model(images, _targets(sizes, masks=head == "mask_rcnn"))
    expected = {"classification", "bbox_regression"} if head == "retinanet" else {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grad = model.backbone.body.body.stages[0].patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, (h, w) in zip(out, sizes):
        if len(det["boxes"]):
            assert det["boxes"][:, 2].max() <= w + 1e-3 and det["boxes"][:, 3].max() <= h + 1e-3
            assert det["labels"].min() >= 0 and det["labels"].max() < 3
        if head == "mask_rcnn":
            assert det["masks"].shape[-2:] == (h, w)


@pytest.mark.parametrize("backbone", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_semantic_fpn_any_size(backbone):
    model = create_dense_model(f"semfpn_{backbone}", num_classes=5)
    x = torch.rand(2, 3, 67, 91)
    logits = model(x)
    assert logits.shape == (2, 5, 67, 91)
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 67, 91)))
    loss.backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    # the head's upsampling is made of modules, so module-hook FLOP counters see it
    assert sum(isinstance(m, torch.nn.Upsample) for m in model.head.modules()) == 1 + 2 + 3
