"""The model family: exact parameter counts, shapes at odd sizes, the ablation switches, bad input."""

import math

import pytest
import torch

import pvt
from pvt import PVTConfig, PyramidVisionTransformer

ALL = pvt.list_models()
V2 = pvt.list_models("pvt_v2_*")
V1 = pvt.list_models("pvt_v1_*")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_every_variant():
    assert ALL == [
        "pvt_v1_tiny", "pvt_v1_small", "pvt_v1_medium", "pvt_v1_large",
        "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5",
        "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
    ]
    assert pvt.list_models("*b2*") == ["pvt_v2_b2", "pvt_v2_b2_li", "mit_b2"]


@pytest.mark.parametrize(
    "name,count",
    [
        ("pvt_v2_b0", 3_666_760), ("pvt_v2_b1", 14_009_000), ("pvt_v2_b2", 25_362_856),
        ("pvt_v2_b2_li", 22_553_512), ("pvt_v2_b3", 45_238_696), ("pvt_v2_b4", 62_556_072),
        ("pvt_v2_b5", 81_956_008), ("pvt_v1_tiny", 13_229_288), ("pvt_v1_small", 24_485_864),
        ("pvt_v1_medium", 44_208_104), ("pvt_v1_large", 61_369_320),
    ],
)
def test_exact_official_parameter_counts(name, count):
    m = pvt.create_model(name)
    assert n_params(m) == count == pvt.get_variant(name).num_params


def test_b0_without_head_is_the_papers_3_4m():
    assert n_params(pvt.create_model("pvt_v2_b0", num_classes=0)) == 3_409_760


@pytest.mark.parametrize("name", ALL)
def test_feature_maps_at_odd_size(name):
    m = pvt.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        maps = m.forward_pyramid(x)
        logits = m(x)
    dims = m.config.embed_dims
    if m.config.overlap_patch_embed:  # successive ceilings
        sizes, (h, w) = [], (97, 131)
        for _ in range(4):
            sizes.append((h, w) if sizes else (math.ceil(h / 4), math.ceil(w / 4)))
            h, w = sizes[-1]
            if len(sizes) < 4:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes = [(25, 33), (13, 17), (7, 9), (4, 5)]
    else:  # floors
        sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    assert [tuple(f.shape) for f in maps] == [(2, c, *s) for c, s in zip(dims, sizes)]
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert [fi["reduction"] for fi in m.feature_info] == [4, 8, 16, 32]
    assert [fi["num_chs"] for fi in m.feature_info] == list(dims)


def test_smallest_inputs_work_and_smaller_ones_fail_clearly():
    m = pvt.create_model("pvt_v2_b0").eval()
    assert m.min_input_size == 29  # stage 1 map ceil(29 / 4) = 8 covers the 8x8 reduction
    assert m(torch.randn(1, 3, 29, 29)).shape == (1, 1000)
    with pytest.raises(ValueError, match="at least 29"):
        m(torch.randn(1, 3, 28, 64))
    li = pvt.create_model("pvt_v2_b2_li").eval()
    assert li.min_input_size == 1 and li(torch.randn(1, 3, 5, 3)).shape == (1, 1000)
    v1 = pvt.create_model("pvt_v1_tiny").eval()
    assert v1.min_input_size == 32
    with pytest.raises(ValueError, match="at least 32"):
        v1(torch.randn(1, 3, 16, 64))


def test_v1_position_embedding_is_interpolated_at_other_sizes():
    m = pvt.create_model("pvt_v1_tiny").eval()
    stage = m.stages[0]
    assert stage.grid == (56, 56) and stage.pos_embed.shape == (1, 56 * 56, 64)
    assert m.stages[3].pos_embed.shape == (1, 7 * 7 + 1, 512)
    pos = stage._pos_embed(56, 56)
    assert pos is stage.pos_embed
    big = stage._pos_embed(28, 40)
    assert big.shape == (1, 28 * 40, 64)
    # bilinear resize of the grid: a constant embedding stays constant
    with torch.no_grad():
        stage.pos_embed.fill_(0.5)
    assert torch.allclose(stage._pos_embed(30, 17), torch.full((1, 30 * 17, 64), 0.5))
    last = m.stages[3]._pos_embed(3, 4)
    assert last.shape == (1, 1 + 12, 512)
    assert torch.equal(last[:, 0], m.stages[3].pos_embed[:, 0])


def test_ablation_switches_build_b2_and_b2_li_from_v1_small():
    b2 = pvt.create_model("pvt_v2_b2")
    ab = pvt.create_model("pvt_v1_small", overlap_patch_embed=True, conv_ffn=True, pos_embed=False, cls_token=False)
    assert n_params(ab) == 25_362_856
    assert {k: v.shape for k, v in ab.state_dict().items()} == {k: v.shape for k, v in b2.state_dict().items()}
    ab.load_state_dict(b2.state_dict())
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(ab.eval()(x), b2.eval()(x))
    li = pvt.create_model(
        "pvt_v1_small", overlap_patch_embed=True, conv_ffn=True, pos_embed=False, cls_token=False, linear_sra=True
    )
    assert n_params(li) == 22_553_512 == n_params(pvt.create_model("pvt_v2_b2_li"))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(overlap_patch_embed=True),  # Table 6 "+OPE": keeps v1's position embedding and class token
        dict(overlap_patch_embed=True, conv_ffn=True),
        dict(linear_sra=True),
        dict(conv_ffn=True),
    ],
)
def test_each_switch_alone_on_v1_small_runs(overrides):
    m = pvt.create_model("pvt_v1_small", num_classes=3, **overrides).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 96, 128))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_switch_effects_on_modules():
    m = pvt.create_model("pvt_v1_small", overlap_patch_embed=True)
    assert m.stages[0].patch_embed.proj.kernel_size == (7, 7)
    assert m.stages[1].patch_embed.proj.padding == (1, 1)
    assert m.stages[0].pos_embed is not None and m.stages[3].cls_token is not None
    li = pvt.create_model("pvt_v2_b2_li")
    attn = li.stages[0].blocks[0].attn
    assert attn.pool is not None and attn.sr.kernel_size == (1, 1) and attn.reduced_tokens(56, 56) == 49
    assert li.stages[3].blocks[0].attn.sr is not None  # linear SRA reduces in every stage
    assert li.stages[0].blocks[0].mlp.relu is not None
    b2 = pvt.create_model("pvt_v2_b2")
    assert b2.stages[3].blocks[0].attn.sr is None and b2.stages[0].blocks[0].attn.reduced_tokens(56, 56) == 49
    assert b2.stages[0].blocks[0].mlp.relu is None and b2.stages[0].blocks[0].mlp.dwconv is not None
    v1 = pvt.create_model("pvt_v1_small")
    assert [s.norm is not None for s in v1.stages] == [False, False, False, True]
    assert [s.norm is not None for s in b2.stages] == [True] * 4


def test_backward_reaches_every_parameter():
    m = pvt.create_model("pvt_v2_b0", num_classes=5, drop_path_rate=0.1).train()
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    v1 = pvt.create_model("pvt_v1_tiny", num_classes=5).train()
    v1(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in v1.parameters())


def test_drop_path_schedule_and_eval_determinism():
    m = pvt.create_model("pvt_v2_b1", drop_path_rate=0.3)
    rates = [b.drop_path.p for s in m.stages for b in s.blocks if hasattr(b.drop_path, "p")]
    assert rates[-1] == pytest.approx(0.3) and len(rates) == 7  # the first block has rate 0
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_initialisation_follows_the_official_code():
    m = pvt.create_model("pvt_v2_b2")
    w = m.stages[0].patch_embed.proj.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (7 * 7 * 64)), rel=0.1)
    fc = m.stages[2].blocks[0].mlp.fc1.weight
    assert fc.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(m.stages[0].norm.weight == 1) and torch.all(m.head.bias == 0)


def test_reset_classifier_and_headless():
    m = pvt.create_model("pvt_v2_b0")
    m.reset_classifier(10)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10) and m.config.num_classes == 10
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 256)
    assert pvt.create_model("pvt_v1_tiny").no_weight_decay() == {
        "stages.0.pos_embed", "stages.1.pos_embed", "stages.2.pos_embed", "stages.3.pos_embed", "stages.3.cls_token"
    }


def test_in_chans():
    m = pvt.create_model("pvt_v2_b0", in_chans=1).eval()
    assert m(torch.randn(1, 1, 40, 40)).shape == (1, 1000)


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(3, 224, 224), "NCHW"),
        (torch.randn(1, 1, 64, 64), "3 input channels"),
        (torch.randn(1, 64, 64, 3), "3 input channels"),
        ([1, 2, 3], "torch.Tensor"),
    ],
)
def test_bad_input_is_a_clear_value_error(x, match):
    m = pvt.create_model("pvt_v2_b0")
    with pytest.raises(ValueError, match=match):
        m(x)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean pvt_v2_b2"):
        pvt.create_model("pvt_v2_b22")
    with pytest.raises(ValueError, match="accepted: pvt_v1_tiny"):
        pvt.create_model("resnet50")


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(depths=(2, 2, 2)), "depths has 3 entries"),
        (dict(embed_dims=(64, 128, 320, 500)), "divisible"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(num_classes=-1), "num_classes"),
        (dict(conv_ffn="yes"), "conv_ffn"),
        (dict(embed_dims="abc"), "embed_dims"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        PVTConfig().replace(**bad)


def test_unknown_override_lists_accepted_fields():
    with pytest.raises(ValueError, match="unknown config field.*linear_sra"):
        pvt.create_model("pvt_v2_b0", linear_attention=True)


def test_config_round_trip_and_model_from_config():
    cfg = pvt.get_variant("pvt_v2_b2_li").config
    again = PVTConfig.from_dict(cfg.to_dict())
    assert again == cfg
    m = PyramidVisionTransformer(again)
    assert n_params(m) == 22_553_512
    assert PVTConfig(cls_token=True).stage_norms is False
    assert PVTConfig(cls_token=True).replace(cls_token=False).stage_norms is True
