"""FLOP counting: the papers' Table 2 (and Tables 5, 6), exact attention terms, cross-checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pvt
from pvt.models.variants import VARIANTS
from pvt.tools.flops import (
    ATTENTION,
    attention_macs,
    complexity_curve,
    count_flops,
    paper_convention_gflops,
    variant_flops,
)


# ------------------------------------------------------------------------------ Table 2
@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v.paper.gflops is not None])
def test_table2_gflops_reproduced_to_the_printed_digit(name):
    ours = paper_convention_gflops(name)
    paper = VARIANTS[name].paper.gflops
    assert abs(ours - paper) < 0.06, (name, ours, paper)
    assert round(ours, 1) == paper, (name, ours, paper)


# The counter's exact multiply-adds at 224 (module count, attention products), as docs/paper_tables.md lists
# them: a regression lock on its printed output, each pair backed by torch's own counter below.
TABLE2_COUNTS = {
    "pvt_v2_b0": (533_319_552, 38_108_672),
    "pvt_v2_b2": (3_902_119_360, 142_600_192),
    "pvt_v2_b2_li": (3_775_751_104, 142_600_192),
    "pvt_v2_b5": (11_380_281_408, 371_252_224),
    "pvt_v1_tiny": (1_860_974_848, 76_420_096),
    "pvt_v1_small": (3_680_227_264, 142_904_320),
    "pvt_v1_large": (9_517_812_864, 311_320_064),
}


@pytest.mark.parametrize("name", TABLE2_COUNTS)
def test_table2_counts_locked_and_backed_by_torchs_flop_counter(name):
    """torch.utils.flop_counter counts matrix products and convolutions only (and in FLOPs, 2 per
    multiply-add): its bmm is our attention term, its mm + addmm our Linear term, its convolution our
    Conv2d term less the one add per output of a conv with a bias. What torch leaves out (LayerNorm, 2 per
    input element with an affine; pooling, 1 per input; ReLU, 1 per output) is summed here from the shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    modules, attention = TABLE2_COUNTS[name]
    with torch.device("meta"):
        model = pvt.create_model(name).eval()
    rest = {"Conv2d": 0, "other": 0}

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            rest["Conv2d"] += out.numel()
        elif isinstance(m, nn.LayerNorm):
            rest["other"] += inputs[0].numel() * (2 if m.elementwise_affine else 1)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            rest["other"] += inputs[0].numel()
        elif isinstance(m, nn.ReLU):
            rest["other"] += out.numel()

    for m in model.modules():
        m.register_forward_hook(hook)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224, device="meta"))
    torch_macs = {str(op).removeprefix("aten."): n // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(torch_macs) <= {"bmm", "mm", "addmm", "convolution"}, torch_macs
    r = variant_flops(name)
    assert (r.module_flops, r.attention_flops, r.flops) == (modules, attention, modules + attention)
    assert torch_macs["bmm"] == r.by_type["attention matmuls"] == attention
    assert torch_macs.get("mm", 0) + torch_macs["addmm"] == r.by_type["Linear"]
    assert torch_macs["convolution"] + rest["Conv2d"] == r.by_type["Conv2d"]
    assert torch_macs["convolution"] + torch_macs.get("mm", 0) + torch_macs["addmm"] + sum(rest.values()) == modules


def test_v1_rows_need_the_attention_products():
    # the finding: without the attention products the v1 rows fall short of the paper's figures
    misses = {n: VARIANTS[n].paper.gflops - variant_flops(n, attention=False).gflops for n in
              ("pvt_v1_small", "pvt_v1_medium", "pvt_v1_large")}
    assert all(m > 0.1 for m in misses.values()), misses
    assert misses["pvt_v1_large"] == pytest.approx(0.282, abs=0.01)


def test_params_are_the_models_own_count():
    # the official counts themselves are asserted in tests/models/test_model.py
    for name in VARIANTS:
        with torch.device("meta"):
            model = pvt.create_model(name)
        assert variant_flops(name).params == sum(p.numel() for p in model.parameters()), name


# ------------------------------------------------------------------------------ exact terms
def _attention_by_stage(report) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, value in report.by_module.items():
        if key.endswith(ATTENTION):
            stage = int(key.split(".")[1])
            out[stage] = out.get(stage, 0) + value
    return out


def test_attention_term_by_hand_b0():
    stages = _attention_by_stage(variant_flops("pvt_v2_b0"))
    # stage 1: N = 56*56 = 3136 queries, N' = (56/8)^2 = 49 keys, C = 32, 2 blocks
    assert stages[0] == 2 * 2 * 3136 * 49 * 32 == 19_668_992
    assert stages[1] == 2 * 2 * 784 * 49 * 64  # 28x28 -> 7x7
    assert stages[2] == 2 * 2 * 196 * 49 * 160  # 14x14 -> 7x7
    assert stages[3] == 2 * 2 * 49 * 49 * 256  # no reduction in stage 4
    assert attention_macs(3136, 49, 32) == 2 * 3136 * 49 * 32


def test_attention_term_v1_class_token_and_odd_size():
    r = variant_flops("pvt_v1_small", (97, 131))
    stages = _attention_by_stage(r)
    # stage 1: 24x32 map, SR 8 -> 3x4 keys; stage 4: 3x4 map + class token attends to itself: 13 x 13
    assert stages[0] == 3 * attention_macs(24 * 32, 3 * 4, 64)
    assert stages[3] == 3 * attention_macs(13, 13, 512)


def test_module_rules_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 8x16x16 out: 2048 * 27 + 2048 bias
        nn.BatchNorm2d(8),  # 2048 * 2
        nn.ReLU(),  # 2048
        nn.MaxPool2d(2),  # 2048 (input elements)
        nn.Upsample(scale_factor=2),  # 2048 (output elements)
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # 2048 * 9
        nn.GELU(),  # not counted by default (mmcv has no rule)
        nn.AdaptiveAvgPool2d(1),  # 2048
        nn.Flatten(),
        nn.Linear(8, 10),  # 8 * 10, bias not counted
        nn.LayerNorm(10),  # 10 * 2
    )
    r = count_flops(model, 32)
    assert r.by_type == {
        "Conv2d": 2048 * 27 + 2048 + 2048 * 9, "BatchNorm2d": 4096, "ReLU": 2048, "MaxPool2d": 2048,
        "Upsample": 2048, "AdaptiveAvgPool2d": 2048, "Linear": 80, "LayerNorm": 20,
    }
    assert r.flops == sum(r.by_type.values()) and r.attention_flops == 0
    assert count_flops(model, 32, gelu=True).by_type["GELU"] == 2048
    assert count_flops(model, 32, batch=3).flops == 3 * r.flops


# ------------------------------------------------------------------------------ cross-checks
def _eager_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    attn = (q @ k.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)
    return attn.softmax(dim=-1) @ v


@pytest.mark.parametrize("name,size", [("pvt_v2_b0", (224, 224)), ("pvt_v1_tiny", (97, 131))])
def test_matches_fvcore_with_eager_attention(name, size, monkeypatch):
    fvcore = pytest.importorskip("fvcore.nn")
    model = pvt.create_model(name).eval()
    for m in model.modules():  # fvcore does not count conv biases; drop them from both sides
        if isinstance(m, nn.Conv2d):
            m.bias = None
    ours = count_flops(model, size)
    monkeypatch.setattr(F, "scaled_dot_product_attention", _eager_sdpa)
    x = torch.randn(1, 3, *size)
    analysis = fvcore.FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    ops = analysis.by_operator()
    assert ours.by_type["Conv2d"] == ops["conv"]
    assert ours.by_type["Linear"] == ops["linear"]
    assert ours.attention_flops == ops["matmul"]


def test_meta_run_equals_real_forward_at_odd_size():
    model = pvt.create_model("pvt_v2_b0")
    meta = count_flops(model, (97, 131))
    real = count_flops(model, (97, 131), device="cpu")
    assert meta.by_module == real.by_module and meta.flops == real.flops
    assert meta.params == real.params == sum(p.numel() for p in model.parameters())


def test_model_left_unchanged():
    model = pvt.create_model("pvt_v2_b0").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, 64)
    count_flops(model, 64, device="cpu")
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.device("meta"):  # a meta model is counted in place, then given back its own forwards
        meta = pvt.create_model("pvt_v2_b0")
    assert count_flops(meta, 64).flops == count_flops(model, 64).flops
    assert all("forward" not in vars(m) and not m._forward_hooks for m in meta.modules())


def test_reference_models_known_figures():
    # torchvision's ResNet-50 and ViT-Small/16 at 224: the commonly quoted 4.1 and 4.6 GFLOPs
    assert complexity_curve("resnet50", [224])[0].gflops == pytest.approx(4.12, abs=0.01)
    vit = complexity_curve("vit_small_patch16", [224])[0]
    # 12 layers of 197 tokens, width 384: attention products 2 * 197 * 197 * 384 each
    assert vit.attention_flops == 12 * attention_macs(197, 197, 384)
    assert vit.gflops == pytest.approx(4.61, abs=0.01)


def test_growth_with_input_size():
    side = lambda name: variant_flops(name, 448).gflops / variant_flops(name, 224).gflops  # noqa: E731
    li, v1 = side("pvt_v2_b2_li"), side("pvt_v1_small")
    assert 3.7 < li <= 4.0  # linear SRA: linear in the number of pixels
    assert v1 > 4.3  # SRA: the attention products grow with the square of the pixels
    li_big = complexity_curve("pvt_v2_b2_li", [224, 1280])
    assert li_big[1].gflops / li_big[0].gflops < (1280 / 224) ** 2


# ------------------------------------------------------------------------------ dense models
def test_dense_prediction_tables():
    from pvt import dense as tasks

    with torch.device("meta"):
        semfpn = tasks.create_dense_model("semfpn_pvt_v2_b0")
        retina = tasks.create_dense_model("retinanet_pvt_v2_b2_li")
    assert count_flops(semfpn, 512).gflops == pytest.approx(25.0, abs=0.1)  # Table 5
    assert count_flops(retina, (800, 1280), method="forward_dummy").gflops == pytest.approx(227.4, abs=0.1)  # Table 6


# ------------------------------------------------------------------------------ bad input
def test_bad_input():
    model = pvt.create_model("pvt_v2_b0")
    with pytest.raises(ValueError, match="input_size"):
        count_flops(model, (224,))
    with pytest.raises(ValueError, match="input_size"):
        count_flops(model, "big")
    with pytest.raises(ValueError, match="too small"):
        count_flops(model, 8)
    with pytest.raises(ValueError, match="no method"):
        count_flops(model, 224, method="forward_dummy")
    with pytest.raises(ValueError, match="unknown model"):
        variant_flops("pvt_v3")
    assert pvt.count_flops is count_flops and math.isfinite(pvt.count_flops(model, 224).gflops)


# ------------------------------------------------------------------------------ modules the paper's counter missed
def test_marked_modules_are_left_out():
    from pvt.tools.flops import mark_uncounted

    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    model = nn.Sequential(block, nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)))
    conv, bn, relu = 16 * 16 * 8 * 27, 2 * 16 * 16 * 8, 16 * 16 * 8
    full = count_flops(model, 16, in_chans=3)
    assert full.flops == conv + bn + relu + 16 * 16 * 8 * 8 + bn
    mark_uncounted(block[1], "SyncBN")  # one norm: left out
    assert count_flops(model, 16, in_chans=3).flops == full.flops - bn
    mark_uncounted(model[1], "a whole branch")  # a module and everything under it
    got = count_flops(model, 16, in_chans=3)
    assert got.flops == conv + relu and "1.0" not in got.by_module
    assert count_flops(model, 16, in_chans=3, uncounted=False).flops == full.flops  # the switch
    assert count_flops(model, 16, in_chans=3, device="cpu").flops == conv + relu  # a real run too
    assert getattr(block[1], "flops_uncounted") == "SyncBN"
