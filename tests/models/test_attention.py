"""Attention maps (pvt.models.attention): each block's weights equal softmax(QK^T / sqrt(d)) over the reduced keys
computed here by hand from the block's parameters, for v1 (SRA, class token), v2 (SRA) and v2-Li (pooled
7x7 keys); acceleration does not change them; the rollout is a distribution over the stage-1 map."""

import pytest
import torch
import torch.nn.functional as F

import pvt
from pvt.accel import accelerate
from pvt.models.attention import attention_maps
from pvt.models.model import PyramidVisionTransformer
from pvt.models.variants import get_variant

TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2), mlp_ratios=(2, 2, 2, 2),
            num_classes=3, img_size=64)
FAMILIES = {"v1": "pvt_v1_tiny", "v2": "pvt_v2_b0", "v2-Li": "pvt_v2_b2_li"}


def _tiny(family, perturb):
    return perturb(PyramidVisionTransformer(get_variant(FAMILIES[family]).config.replace(**TINY)))


def _hand_attention(attn, x, h, w):
    """softmax(Q K^T / sqrt(d)) of one SpatialReductionAttention, written out with functional ops."""
    b, n, c = x.shape
    nh = attn.num_heads
    d = c // nh
    q = F.linear(x, attn.q.weight, attn.q.bias)
    prefix = n - h * w
    if attn.sr is None:
        keys_from = x
    else:
        m = x[:, prefix:].transpose(1, 2).reshape(b, c, h, w)
        if attn.pool is not None:
            m = F.adaptive_avg_pool2d(m, 7)
        m = F.conv2d(m, attn.sr.weight, attn.sr.bias, stride=attn.sr.stride)
        keys_from = F.layer_norm(m.flatten(2).transpose(1, 2), (c,), attn.norm.weight, attn.norm.bias, attn.norm.eps)
        if attn.pool is not None:
            keys_from = F.gelu(keys_from)
    kv = F.linear(keys_from, attn.kv.weight, attn.kv.bias)
    k, v = kv[..., :c], kv[..., c:]
    out = []
    for i in range(nh):
        s = q[..., i * d:(i + 1) * d] @ k[..., i * d:(i + 1) * d].transpose(1, 2) / d ** 0.5
        out.append(s.softmax(-1))
    a = torch.stack(out, 1)
    heads = [a[:, i] @ v[..., i * d:(i + 1) * d] for i in range(nh)]
    return a, F.linear(torch.cat(heads, -1), attn.proj.weight, attn.proj.bias)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_weights_equal_hand_computation(family, perturb):
    model = _tiny(family, perturb)
    x = torch.randn(2, 3, 64, 48)
    seen = []
    hooks = [blk.attn.register_forward_hook(lambda m, args, out: seen.append((m, args, out)))
             for st in model.stages for blk in st.blocks]
    with torch.no_grad():
        model(x)
    for hk in hooks:
        hk.remove()
    maps = attention_maps(model, x)
    got = [a for stage in maps.weights for a in stage]
    assert len(got) == len(seen) == sum(TINY["depths"])
    for a, (m, (tok, h, w), out) in zip(got, seen):
        hand, hand_out = _hand_attention(m, tok, h, w)
        torch.testing.assert_close(hand_out, out, atol=1e-5, rtol=1e-4)  # the hand computation is the module's
        assert a.shape == hand.shape
        torch.testing.assert_close(a, hand, atol=1e-6, rtol=1e-5)
    # key grids: stride x sr_ratio on the 64 x 48 input (v1 / v2), always 7 x 7 pooled keys (Li)
    if family == "v2-Li":
        assert maps.key_grid == [(7, 7)] * 4
    else:
        # v1 patchifies (floor), v2's overlapping embedding pads (ceil): 3 -> 1 or 2 at stride 2
        assert maps.query_grid == [(16, 12), (8, 6), (4, 3), (2, 1 if family == "v1" else 2)]
        assert maps.key_grid[:3] == [(h // r, w // r) for (h, w), r in zip(maps.query_grid, (8, 4, 2))]
    assert maps.query_prefix[-1] == (1 if family == "v1" else 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_map_and_rollout(family, perturb):
    model = _tiny(family, perturb)
    x = torch.randn(1, 3, 64, 64)
    maps = attention_maps(model, x)
    kh, kw = maps.key_grid[0]
    m = maps.map(stage=0, block=0, head=0, query=(0.5, 0.5))
    assert m.shape == (1, kh, kw)
    torch.testing.assert_close(m.sum(), torch.tensor(1.0))
    h, w = maps.query_grid[0]
    q = (h // 2) * w + w // 2  # the query under the image's centre
    torch.testing.assert_close(m.flatten(), maps.weights[0][0][0, 0, q])
    mean = maps.map(stage=1, block=-1)  # mean over heads and queries
    torch.testing.assert_close(mean.flatten(), maps.weights[1][-1][0].mean(0)[maps.query_prefix[1]:].mean(0)
                               [maps.key_prefix[1]:])
    r = maps.rollout()
    assert r.shape == (1, h, w)
    torch.testing.assert_close(r.sum(), torch.tensor(1.0))
    assert bool((r >= 0).all())
    with pytest.raises(ValueError, match="stage 9 out of range"):
        maps.map(stage=9)
    with pytest.raises(ValueError, match="head 5 out of range"):
        maps.map(head=5)
    with pytest.raises(ValueError, match="query"):
        maps.map(query=(2.0, 0.5))


def test_rollout_follows_attention():
    """A model whose every query attends only to the key cell of the top-left corner: the rollout's weight
    (the residual half aside) flows to the top-left stage-1 tokens."""
    model = PyramidVisionTransformer(get_variant("pvt_v2_b0").config.replace(**TINY)).eval()
    maps = attention_maps(model, torch.randn(1, 3, 64, 64))
    for stage in maps.weights:
        for a in stage:
            a.zero_()
            a[..., 0] = 1.0
    r = maps.rollout(residual=0.0)[0]
    # stage 1's key cell 0 covers its 8 x 8 top-left tokens (sr_ratio 8), evenly
    assert float(r[:8, :8].sum()) == pytest.approx(1.0)
    torch.testing.assert_close(r[:8, :8], torch.full((8, 8), 1 / 64))
    # attention spread evenly over every key rolls out to an even map (no border pattern)
    for stage in maps.weights:
        for a in stage:
            a.fill_(1.0 / a.shape[-1])
    torch.testing.assert_close(maps.rollout()[0], torch.full((16, 16), 1 / 256))


def test_acceleration_does_not_change_maps(perturb):
    model = _tiny("v2", perturb)
    x = torch.randn(2, 3, 64, 64)
    plain = attention_maps(model, x)
    accelerate(model, precision="bfloat16")
    fast = attention_maps(model, x)
    for a, b in zip(plain.weights, fast.weights):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, atol=0, rtol=0)
    assert all(not blk.attn._forward_pre_hooks for st in model.stages for blk in st.blocks)  # hooks removed


def test_public_name_and_bad_input(perturb):
    assert pvt.attention_maps is attention_maps
    with pytest.raises(ValueError, match="holds no Pyramid Vision Transformer"):
        attention_maps(torch.nn.Linear(2, 2), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        attention_maps(_tiny("v2", perturb), torch.zeros(8, 8))
