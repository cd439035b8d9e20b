"""The accelerated paths' building blocks on the CPU: the weight cache that follows parameter changes,
the LayerNorm fallback, and the Triton LayerNorm kernel itself run in Triton's interpreter (no GPU needed)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pvt.accel.cache import WeightCache
from pvt.accel.kernels import layer_norm


def test_weight_cache_keeps_an_entry_until_its_parameters_change():
    lin, cache, made = nn.Linear(8, 4), WeightCache(), []

    def cast():
        made.append(1)
        return lin.weight.detach().to(torch.bfloat16)

    w = cache.get("w", (lin.weight, lin.bias), cast)
    assert w.dtype == torch.bfloat16 and torch.equal(w, lin.weight.detach().to(torch.bfloat16))
    assert cache.get("w", (lin.weight, lin.bias), cast) is w and len(made) == 1  # no new cast
    with torch.no_grad():
        lin.bias.add_(1)  # in place: the version counter moves
    assert cache.get("w", (lin.weight, lin.bias), cast) is not w and len(made) == 2
    lin.load_state_dict({"weight": torch.ones(4, 8), "bias": torch.zeros(4)})
    assert torch.equal(cache.get("w", (lin.weight, lin.bias), cast), torch.ones(4, 8, dtype=torch.bfloat16))
    lin.weight = nn.Parameter(torch.zeros(4, 8))  # replaced
    assert torch.equal(cache.get("w", (lin.weight, lin.bias), cast), torch.zeros(4, 8, dtype=torch.bfloat16))
    assert len(made) == 4 and len(cache) == 1 and "w" in cache and "w" in repr(cache)
    lin.cache = cache
    assert set(lin.state_dict()) == {"weight", "bias"}
    assert len(copy.deepcopy(cache)) == 0 and len(pickle.loads(pickle.dumps(cache))) == 0
    cache.clear()
    assert len(cache) == 0


@pytest.fixture
def gpu_path_on_cpu(monkeypatch):
    """Calls of accelerated modules without autograd take the GPU path (pvt.accel.gpu) on the CPU, with
    bfloat16 as its dtype; run under CPU autocast, where its LayerNorm falls back to F.layer_norm."""
    from pvt.accel import modules
    from pvt.accel.gpu import GpuOps
    from pvt.layers import PLAIN

    monkeypatch.setattr(modules.AcceleratedOps, "pick", lambda self, module, x: (
        PLAIN if torch.is_grad_enabled() else GpuOps(self, torch.bfloat16, self.float32_norms)))
    monkeypatch.setattr(modules.AcceleratedPyramidVisionTransformer, "_cpu_call", lambda self, x: (False, None))
    old = torch.get_autocast_dtype("cuda")
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    yield
    torch.set_autocast_dtype("cuda", old)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name,switches", [("pvt_v2_b2_li", {}), ("pvt_v1_tiny", {"conv_ffn": True}), ("pvt_v2_b0", {})])
def test_gpu_path_computes_what_autocast_computes(gpu_path_on_cpu, name, switches):
    """The GPU path's functions, run on the CPU: as close to float32 as plain autocast is, float32
    features, bfloat16 weights cached."""
    from pvt import PyramidVisionTransformer, get_variant
    from pvt.accel import accelerate

    tiny = dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 5, 8), num_classes=7)
    ref = PyramidVisionTransformer(get_variant(name).config.replace(**tiny, **switches)).eval()
    fast = accelerate(copy.deepcopy(ref))
    x = torch.randn(2, 3, 67, 93)
    with torch.inference_mode():
        exact, exact_feats = ref(x), ref.forward_pyramid(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_feats = fast(x).float(), fast.forward_pyramid(x)
            plain_low, plain_feats = ref(x).float(), ref.forward_pyramid(x)
    assert _rel(low, exact) <= 1.25 * _rel(plain_low, exact) + 1e-3, (_rel(low, exact), _rel(plain_low, exact))
    assert F.cosine_similarity(low.flatten(), exact.flatten(), dim=0).item() >= 0.999
    for f, p, e in zip(low_feats, plain_feats, exact_feats):
        assert f.dtype == torch.float32 and _rel(f, e) <= 1.25 * _rel(p.float(), e) + 1e-3
    assert ("attn.q", torch.bfloat16) in fast.stages[0].blocks[0].ops.weight_cache
    assert ("proj", torch.bfloat16) in fast.stages[0].patch_embed.ops.weight_cache


@pytest.mark.parametrize("out", [torch.float32, torch.bfloat16])
def test_layer_norm_fallback_rounds_like_autocast(out):
    norm = nn.LayerNorm(40, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 7, 40) * 4 + 1
    y = layer_norm(x, norm, out)
    assert y.dtype == out and torch.equal(y, norm(x).to(out))


def test_triton_layer_norm_kernel_in_the_interpreter():
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from pvt.accel.kernels import triton_layer_norm
        worst = {}
        for cols in (32, 64, 100, 160, 320, 512):
            for din, dout in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                              (torch.float32, torch.bfloat16)):
                x = (torch.randn(3, 37, cols) * 3 + 1).to(din)
                w, b = torch.randn(cols), torch.randn(cols)
                y = triton_layer_norm(x, w, b, 1e-6, dout)
                ref = F.layer_norm(x.float(), (cols,), w, b, 1e-6)
                assert y.dtype == dout and y.shape == x.shape
                # float32 out: float32 rounding; bfloat16 out: at most one bf16 step from autocast's rounding
                tol = 1e-5 if dout == torch.float32 else 2 ** -7 * ref.abs().max().item()
                assert (y.float() - ref).abs().max().item() <= tol, (cols, din, dout)
        x = torch.randn(4, 64, 10).transpose(1, 2)  # rows not contiguous
        y = triton_layer_norm(x, torch.ones(64), torch.zeros(64), 1e-5, torch.float32)
        assert (y - F.layer_norm(x, (64,), eps=1e-5)).abs().max().item() < 1e-5
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
