"""The fused inference fast path is the default path and computes what the plain ops compute."""

import pytest
import torch
import torch.nn.functional as F

import pvt
from pvt.layers import fast_path_active, reference_path
from pvt.variants import get_variant

TINY = dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 5, 8), num_classes=7)


def tiny(name: str, **kw) -> pvt.PyramidVisionTransformer:
    return pvt.PyramidVisionTransformer(get_variant(name).config.replace(**TINY, **kw)).eval()


def test_fast_path_is_active_only_where_it_may_be():
    x = torch.randn(1, 3)
    with torch.no_grad():
        assert fast_path_active(x)
        assert not fast_path_active(x.double())
        assert not fast_path_active(x.bfloat16())
        with reference_path():
            assert not fast_path_active(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fast_path_active(x)
    assert not fast_path_active(x)  # autograd on


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"])
@pytest.mark.parametrize("size", [(67, 93), (128, 96)])
def test_fast_path_equals_reference_ops(name, size):
    model = tiny(name)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        fast_logits, fast_maps = model(x), model.forward_features(x)
        with reference_path():
            ref_logits, ref_maps = model(x), model.forward_features(x)
    assert fast_logits.shape == (2, 7)
    torch.testing.assert_close(fast_logits, ref_logits, rtol=0, atol=1e-5)
    for a, b in zip(fast_maps, ref_maps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_fast_path_full_size_b0_matches_timm():
    timm = pytest.importorskip("timm")
    from pvt.weights.keys import to_timm

    model = pvt.create_model("pvt_v2_b0").eval()
    ref = timm.create_model("pvt_v2_b0", pretrained=False).eval()
    ref.load_state_dict(to_timm(model.state_dict()))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff < 1e-4


def test_fused_qkv_and_no_bias_variant():
    model = tiny("pvt_v2_b0", qkv_bias=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)
        with reference_path():
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_train_and_eval_modes_agree_without_dropout_and_grads_flow():
    model = tiny("pvt_v2_b2_li")
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        eval_out = model(x)
    model.train()
    train_out = model(x)  # autograd path: the plain ops
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=1e-5)
    train_out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_stochastic_training_keeps_the_reference_path():
    model = tiny("pvt_v2_b0", drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # drop path still active under no_grad in train mode


def test_channels_last_input_and_weight_updates_are_seen():
    model = tiny("pvt_v2_b0")
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        ref = model(x)
        cl = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, rtol=0, atol=1e-5)
        # the cached channels-last conv weights follow in-place updates (optimiser steps, loading)
        for p in model.parameters():
            p.mul_(1.1)
        after = model(x)
        with reference_path():
            after_ref = model(x)
    torch.testing.assert_close(after, after_ref, rtol=0, atol=1e-5)
    assert (after - ref).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_bfloat16_autocast_is_close(name):
    model = tiny(name)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert F.cosine_similarity(low.flatten(), ref.flatten(), dim=0).item() >= 0.999


def test_fused_qkv_cache_follows_weight_updates():
    """The stacked q/kv weight of the stage-4 GEMM is cached; an in-place update must be seen."""
    from pvt.layers import reference_path

    m = pvt.create_model("pvt_v2_b0", num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        m(x)  # fills the cache
        attn = m.stages[3].blocks[0].attn
        attn.kv.weight.mul_(1.5)
        attn.q.bias.add_(0.1)
        fast = m(x)
        with reference_path():
            ref = m(x)
    assert (fast - ref).abs().max().item() < 1e-5


def test_cpu_batches_run_in_pieces_with_per_sample_results(monkeypatch):
    import pvt.model as M

    model = pvt.create_model("pvt_v2_b0", num_classes=7).eval()
    x = torch.randn(5, 3, 64, 96)
    with torch.inference_mode():
        # stage-1 hidden activation of one 64x96 image: 16*24*256 floats = 384 KiB
        monkeypatch.setattr(M, "CPU_CHUNK_BYTES", 768 * 1024)
        assert model._chunk_size(x) == 2  # 5 x 384 KiB in 768 KiB pieces: 3 chunks of (at most) 2 images
        chunked, chunked_maps = model(x), model.forward_features(x)
        monkeypatch.setattr(M, "CPU_CHUNK_BYTES", 0)
        assert model._chunk_size(x) is None
        whole, whole_maps = model(x), model.forward_features(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(5)])
    assert chunked.shape == (5, 7) and (chunked - whole).abs().max().item() < 1e-5
    assert (single - whole).abs().max().item() < 1e-5
    for a, b in zip(chunked_maps, whole_maps):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
    with torch.no_grad(), pvt.layers.reference_path():
        assert model._chunk_size(x) is None  # only the CPU fast path chunks


def test_chunk_budget_follows_the_allocator(monkeypatch):
    import pvt.model as M
    import pvt.runtime as R

    monkeypatch.setattr(M, "CPU_CHUNK_BYTES", None)
    monkeypatch.setattr(R, "_mode", "default")
    assert M.cpu_chunk_bytes() == 16 * 2**20
    monkeypatch.setattr(R, "_mode", "tuned")
    assert M.cpu_chunk_bytes() == R.MMAP_THRESHOLD == 32 * 2**20
    model = pvt.create_model("pvt_v2_b0").eval()
    x = torch.empty(8, 3, 224, 224)
    with torch.inference_mode():  # B0's stage-1 hidden at 224: 3136 x 256 floats = 3.06 MiB per image
        assert model._chunk_size(x) is None  # 24.5 MiB: one piece under the tuned allocator
        monkeypatch.setattr(R, "_mode", "default")
        assert model._chunk_size(x) == 4  # two pieces of 12.25 MiB
    monkeypatch.setattr(M, "CPU_CHUNK_BYTES", 0)
    assert M.cpu_chunk_bytes() == 0
