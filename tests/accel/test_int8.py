"""The int8 CPU path (pvt.accel.quant): every linear layer as a oneDNN u8 x s8 product, dynamic or
calibrated (static) activation ranges, reversible, and close to float32.

Tolerance: logits cosine similarity >= 0.99 to float32 on these few-channel random models (measured
0.9996-0.99995; int8 rounds every product's inputs to 1/255 of their range), and the fused int8
operator ran for every block.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from pvt.accel import accelerate, cpu, quant
from pvt.accel.capability import bf16_kernels, has_bf16
from pvt.models.model import PyramidVisionTransformer
from pvt.models.variants import get_variant

pytestmark = pytest.mark.skipif(not cpu.INT8_OPS, reason="needs oneDNN's quantised linear operators")

TINY = dict(embed_dims=(16, 32, 40, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 5, 8), num_classes=7)
NO_VNNI = frozenset({"avx2"})
NO_FUSED_BF16 = bf16_kernels()  # why oneDNN's fused bf16 kernels do not run here (None: they do)


def tiny(name: str, **kw) -> PyramidVisionTransformer:
    torch.manual_seed(0)
    return PyramidVisionTransformer(get_variant(name).config.replace(**{**TINY, **kw})).eval()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def qlinear_calls(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "onednn::qlinear_pointwise")


def linears_per_forward(model: PyramidVisionTransformer) -> int:
    """int8 products per forward: q + kv (or one stacked qkv), proj, fc1, fc2 per block."""
    return sum(3 + (1 if b.attn.sr is None else 2) for s in model.stages for b in s.blocks)


CASES = [("pvt_v2_b0", {}), ("pvt_v2_b2_li", {}), ("pvt_v1_tiny", {}), ("pvt_v1_tiny", dict(conv_ffn=True))]


@pytest.mark.parametrize("name,switches", CASES, ids=[f"{n}-{'-'.join(s) or 'stock'}" for n, s in CASES])
@pytest.mark.parametrize("calibrated", [False, True], ids=["dynamic", "static"])
def test_int8_is_close_to_float32_at_odd_sizes(name, switches, calibrated):
    ref = tiny(name, **switches)
    calibration = torch.randn(6, 3, 80, 72) if calibrated else None
    model = quant.quantize(copy.deepcopy(ref), calibration, batch_size=4, min_width=0)
    acc = model.acceleration
    assert acc.precision == "int8" and acc.int8 == ("static" if calibrated else "dynamic")
    assert acc.compute == ("bfloat16" if has_bf16() and NO_FUSED_BF16 is None else "float32")
    x = torch.randn(3, 3, 67, 93)
    with torch.inference_mode():
        expected, out = ref(x), model(x)
        maps = model.forward_pyramid(x)
        calls = qlinear_calls(lambda: model(x))
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert cosine(out, expected) >= 0.99
    assert all(m.dtype == torch.float32 for m in maps)
    assert calls == linears_per_forward(model)
    if calibrated:
        keys = {"mlp.fc1", "mlp.fc2", "attn.proj"}
        assert all(keys <= set(b.ops.activation_qparams) for s in model.stages for b in s.blocks)


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_compute_dtype_and_seven_bit_activations(compute):
    ref = tiny("pvt_v2_b0")
    x = torch.randn(2, 3, 64, 64)
    eight = quant.quantize(copy.deepcopy(ref), compute=compute, min_width=0)
    seven = quant.quantize(copy.deepcopy(ref), compute=compute, flags=NO_VNNI, min_width=0)
    assert seven.acceleration.reduce_range and "7-bit" in repr(seven.acceleration)
    assert not eight.acceleration.reduce_range or not quant.has_vnni()
    with torch.inference_mode():
        expected = ref(x)
        assert cosine(eight(x), expected) >= 0.99
        assert cosine(seven(x), expected) >= 0.98  # one bit less per activation
    # bfloat16 around the products where oneDNN's fused bf16 kernels run; else float32, saying so in one line
    fused = compute == "float32" or NO_FUSED_BF16 is None
    assert eight.acceleration.compute == (compute if fused else "float32")
    assert ("instead of bfloat16" in eight.acceleration.note) == (not fused)
    # the fallback on every CPU: an emulated AVX2-only one (no AVX-512, no AVX-NE-CONVERT)
    zen3 = quant.quantize(copy.deepcopy(ref), compute=compute, flags=NO_VNNI, min_width=0)
    assert zen3.acceleration.compute == "float32" and not zen3.acceleration.bf16_fused
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # int8 with float32 around it
        assert cosine(zen3(x), expected) >= 0.98


def test_quantize_is_recorded_and_reversible():
    ref = tiny("pvt_v2_b0")
    model = copy.deepcopy(ref)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    quant.quantize(model, torch.randn(4, 3, 64, 64), min_width=0)
    assert quant.is_quantized(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # parameters untouched
    copied = copy.deepcopy(model)  # ranges travel with copies; caches are rebuilt
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(copied(x), model(x), rtol=0, atol=1e-6)
    quant.dequantize(model)
    assert not quant.is_quantized(model) and model.acceleration.precision == "float32"
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    # a plain model is accelerated on the way; training mode and autograd take the float32 plain path
    plain_model = quant.quantize(copy.deepcopy(ref))
    out = plain_model(x)
    assert out.requires_grad
    torch.testing.assert_close(out, ref(x), rtol=0, atol=1e-5)


def test_calibration_inputs_and_errors():
    ref = tiny("pvt_v2_b0")
    loader = [(torch.randn(2, 3, 64, 64), torch.tensor([0, 1])), (torch.randn(3, 64, 64), 0)]
    model = quant.quantize(copy.deepcopy(ref), loader, min_width=0)
    assert model.acceleration.int8 == "static"
    with pytest.raises(ValueError, match="no images"):
        quant.quantize(copy.deepcopy(ref), [])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        quant.quantize(copy.deepcopy(ref), torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="int8 model"):
        quant.calibrate(accelerate(copy.deepcopy(ref)), torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="compute"):
        quant.quantize(copy.deepcopy(ref), compute="float16")
    with pytest.raises(TypeError):
        quant.quantize(torch.nn.Linear(2, 2))
    # static ranges missing for a block (e.g. cleared by hand): a clear error, not a crash
    model.stages[0].blocks[0].ops.activation_qparams.clear()
    with pytest.raises(RuntimeError, match="calibrate"), torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))


def test_static_ranges_cover_the_calibration_set():
    ref = tiny("pvt_v2_b0")
    images = torch.randn(5, 3, 64, 64)
    model = quant.quantize(copy.deepcopy(ref), images, batch_size=2)
    blk = model.stages[0].blocks[0]
    lo, hi = blk.ops.activation_ranges["mlp.fc2"]
    assert lo < 0 < hi  # GELU outputs reach below zero
    scale, zero = blk.ops.activation_qparams["mlp.fc2"]
    top = 127 if model.acceleration.reduce_range else 255  # 7-bit activations on CPUs without VNNI
    assert scale == pytest.approx((hi - lo) / top) and 0 <= zero <= top
    assert cpu.qparams(-1.0, 3.0) == (pytest.approx(4 / 255), 64)
    assert cpu.qparams(0.5, 2.0, reduce_range=True) == (pytest.approx(2 / 127), 0)  # range widened to hold 0


def test_int8_where_it_pays():
    """Beside bf16 GEMMs only layers at least INT8_MIN_WIDTH[bf16] wide go int8; beside float32, all."""
    ref = tiny("pvt_v2_b0", embed_dims=(16, 32, 40, 160))  # stage 4: q/kv stacked 480 wide, fc1 1280, fc2 160
    x = torch.randn(2, 3, 64, 64)
    every = quant.quantize(copy.deepcopy(ref), compute="float32")
    assert every.acceleration.int8_min_width == 0
    with pytest.raises(ValueError, match="min_width"):
        quant.quantize(copy.deepcopy(ref), min_width=-1)
    if NO_FUSED_BF16 is not None:
        with torch.inference_mode():
            assert qlinear_calls(lambda: every(x)) == linears_per_forward(ref)
        pytest.skip(f"bf16 beside int8 needs oneDNN's fused bf16 kernels: {NO_FUSED_BF16}")
    wide = quant.quantize(copy.deepcopy(ref), compute="bfloat16")
    assert wide.acceleration.int8_min_width == cpu.INT8_MIN_WIDTH[torch.bfloat16] == 160
    assert "layers >= 160 wide" in repr(wide.acceleration)
    widths = []  # the output widths of every int8 candidate per forward (q and kv stacked without reduction)
    for blk in (b for stage in ref.stages for b in stage.blocks):
        a, m = blk.attn, blk.mlp
        widths += ([3 * a.q.out_features] if a.sr is None else [a.q.out_features, a.kv.out_features])
        widths += [a.proj.out_features, m.fc1.out_features, m.fc2.out_features]
    assert len(widths) == linears_per_forward(ref)
    with torch.inference_mode():
        assert qlinear_calls(lambda: wide(x)) == sum(w >= 160 for w in widths) == 7  # 3 fc1 + stage 4's four
        assert qlinear_calls(lambda: every(x)) == len(widths)
        assert cosine(wide(x), ref(x)) >= 0.99


def test_quantize_turns_the_cpu_path_on():
    ref = tiny("pvt_v2_b0")
    model = quant.quantize(accelerate(copy.deepcopy(ref), cpu=False), min_width=0)
    assert model.acceleration.cpu and model.acceleration.precision == "int8"
    with torch.inference_mode():
        assert qlinear_calls(lambda: model(torch.randn(1, 3, 64, 64))) == linears_per_forward(model)


def test_quantising_warns_nothing_and_leaves_the_warning_filters_alone(monkeypatch):
    # an int8 forward quantises before every product: no deprecation warning, and no per-call swap of the
    # process's warning filters (warnings.catch_warnings, which is not thread-safe)
    import warnings

    model = quant.quantize(accelerate(tiny("pvt_v2_b0")))  # dynamic ranges: quantises on every call
    x = torch.randn(1, 3, 64, 64)
    swaps = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(warnings.catch_warnings, "__enter__",
                            lambda self, real=warnings.catch_warnings.__enter__: swaps.append(1) or real(self))
        with torch.inference_mode():
            assert qlinear_calls(lambda: model(x)) == linears_per_forward(model)
    assert swaps == []
    codes = cpu._quantize(torch.tensor([-1.0, 0.0, 1.0, 2.0]), 0.1, 10)
    torch.testing.assert_close(codes, torch.tensor([0, 10, 20, 30], dtype=torch.uint8))
