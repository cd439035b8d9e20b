"""The bfloat16 CPU path: the fused kernels on bf16 activations and cached bf16 weights, as the model's
precision or under CPU bf16 autocast; outputs float32 and close to the float32 model.

Tolerance: logits cosine similarity >= 0.999 to float32 and max |difference| <= 5 % of the logits'
range on these few-channel random models (bf16 keeps 8 significant bits; measured ~0.99995).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from pvt.accel import accelerate, plain
from pvt.model import PyramidVisionTransformer
from pvt.variants import get_variant

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
    blk = fast.stages[0].blocks[0]
    assert any(key[1] == torch.bfloat16 for key in blk.weight_cache._entries)
    assert all(p.dtype == torch.float32 for p in fast.parameters())


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
    assert "mkldnn::_linear_pointwise" in ran
    assert out.dtype == plain_autocast.dtype == torch.bfloat16  # the head under autocast, as the plain model's
    close(out.float(), expected)


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
