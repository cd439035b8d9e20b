"""The bfloat16 CPU path: the fused kernels on bf16 activations and cached bf16 weights, as the model's
precision or under CPU bf16 autocast; outputs float32 and close to the float32 model. Where oneDNN's fused
bf16 kernels do not run (AVX2-only CPUs: the tests that need them skip there) bfloat16 is the plain model
under CPU autocast; that fallback is tested on every CPU by emulating an AVX2-only one (``flags=``).

Tolerance: logits cosine similarity >= 0.999 to float32 and max |difference| <= 5 % of the logits'
range on these few-channel random models (bf16 keeps 8 significant bits; measured ~0.99995).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from pvt.accel import accelerate, capability, plain
from pvt.models.model import PyramidVisionTransformer
from pvt.models.variants import get_variant

TINY = dict(embed_dims=(16, 32, 40, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 5, 8), num_classes=7)


def tiny(name: str, **kw) -> PyramidVisionTransformer:
    torch.manual_seed(0)
    return PyramidVisionTransformer(get_variant(name).config.replace(**TINY, **kw)).eval()


def close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == torch.float32 and out.shape == ref.shape
    cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert cos >= 0.999, cos
    assert (out - ref).abs().max().item() <= 0.05 * (ref.max() - ref.min()).item()


def ops_run(fn) -> dict[str, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


CASES = ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"]
AVX2_ONLY = frozenset({"avx", "avx2", "fma", "f16c"})  # a Zen 3: no AVX-512, no AVX-NE-CONVERT
NO_FUSED_BF16 = capability.bf16_kernels()
needs_fused_bf16 = pytest.mark.skipif(NO_FUSED_BF16 is not None, reason=f"needs oneDNN's fused bf16 kernels: {NO_FUSED_BF16}")


def fused_bf16_weights(model) -> bool:
    """Whether the fused bf16 path ran: it caches bf16 copies of the weights."""
    return any(key[1] == torch.bfloat16 for key in model.stages[0].blocks[0].ops.weight_cache._entries)


@needs_fused_bf16
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("size", [(67, 93), (128, 96)])
def test_bf16_model_is_close_to_float32_and_runs_fused_bf16_kernels(name, size):
    ref = tiny(name)
    fast = accelerate(copy.deepcopy(ref), precision="bfloat16")
    assert fast.acceleration.precision == "bfloat16"
    x = torch.randn(3, 3, *size)
    with torch.inference_mode():
        expected, expected_maps = ref(x), ref.forward_pyramid(x)
        out, maps = fast(x), fast.forward_pyramid(x)
        ran = ops_run(lambda: fast(x))
    assert ran.get("mkldnn::_linear_pointwise", 0) >= 4
    assert "aten::addmm" in ran  # the head only: float32 on float32 pooled tokens
    assert ran.get("aten::linear", 0) == 1
    close(out, expected)
    for m, r in zip(maps, expected_maps):
        assert m.dtype == torch.float32
        assert F.cosine_similarity(m.flatten(), r.flatten(), dim=0).item() >= 0.999
    # the cache holds bf16 weights; the parameters stay float32
    assert fused_bf16_weights(fast) and not fast.acceleration.note
    assert all(p.dtype == torch.float32 for p in fast.parameters())


@needs_fused_bf16
def test_cpu_autocast_takes_the_bf16_path_on_a_float32_model():
    ref = tiny("pvt_v2_b0")
    fast = accelerate(copy.deepcopy(ref))
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        expected = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x)
            plain_autocast = ref(x)
            ran = ops_run(lambda: fast(x))
    assert "mkldnn::_linear_pointwise" in ran and fused_bf16_weights(fast)  # bf16 kernels, not float32 ones
    assert out.dtype == plain_autocast.dtype == torch.bfloat16  # the head under autocast, as the plain model's
    close(out.float(), expected)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_without_fused_bf16_kernels_bf16_is_the_plain_model_under_autocast(name):
    """An AVX2-only CPU (emulated; the real thing on one): no oneDNN bf16 error, one line saying what runs."""
    ref = tiny(name)
    fast = accelerate(copy.deepcopy(ref), precision="bfloat16", flags=AVX2_ONLY)
    acc = fast.acceleration
    assert acc.precision == "bfloat16" and not acc.bf16_fused
    assert "plain modules under CPU autocast" in acc.note and "avx512bw" in acc.note and "\n" not in acc.note
    assert "note=" in repr(acc)
    x = torch.randn(3, 3, 67, 93)
    with torch.inference_mode():
        expected, out, maps = ref(x), fast(x), fast.forward_pyramid(x)
        ran = ops_run(lambda: fast(x))
        pieces = accelerate(copy.deepcopy(ref), precision="bfloat16", chunk_bytes=1, flags=AVX2_ONLY)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_out, plain_autocast = accelerate(copy.deepcopy(ref), flags=AVX2_ONLY)(x), ref(x)
    assert "mkldnn::_linear_pointwise" not in ran and "onednn::qlinear_pointwise" not in ran
    assert not fused_bf16_weights(fast)
    close(out, expected)
    close(pieces, expected)
    assert all(m.dtype == torch.float32 for m in maps)
    torch.testing.assert_close(autocast_out, plain_autocast, rtol=0, atol=0)  # exactly the plain model under autocast


@needs_fused_bf16
def test_pieces_and_hooks_on_the_bf16_path():
    ref = tiny("pvt_v1_tiny", conv_ffn=True)
    pieces = accelerate(copy.deepcopy(ref), precision="bfloat16", chunk_bytes=1)  # one image per piece
    whole = accelerate(copy.deepcopy(ref), precision="bfloat16", chunk_bytes=0)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        a, b, expected = pieces(x), whole(x), ref(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-2)  # same kernels; oneDNN may block the batch differently
    close(a, expected)
    # a hook on one block: that block takes the plain float32 forward on what its bf16 neighbour handed over
    seen = []
    handle = whole.stages[1].blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].dtype))
    try:
        with torch.inference_mode():
            hooked = whole(x)
    finally:
        handle.remove()
    assert seen == [torch.float32]
    close(hooked, expected)


def test_bf16_is_reversible():
    ref = tiny("pvt_v2_b0")
    model = accelerate(copy.deepcopy(ref), precision="bfloat16")
    x = torch.randn(2, 3, 64, 64)
    accelerate(model)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    plain(model)
    assert type(model) is PyramidVisionTransformer
