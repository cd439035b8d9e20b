"""The GPU path's kernels on the CPU: cached casts that follow parameter changes, the LayerNorm
fallback, and the Triton LayerNorm kernel itself run in Triton's interpreter (no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pvt.kernels import cast_param, layer_norm


def test_cast_param_is_cached_until_the_parameter_changes():
    lin = nn.Linear(8, 4)
    w = cast_param(lin, "weight", torch.bfloat16)
    assert w.dtype == torch.bfloat16 and torch.equal(w, lin.weight.detach().to(torch.bfloat16))
    assert cast_param(lin, "weight", torch.bfloat16) is w  # no new cast
    with torch.no_grad():
        lin.weight.mul_(2)  # in place: the version counter moves
    w2 = cast_param(lin, "weight", torch.bfloat16)
    assert w2 is not w and torch.equal(w2, lin.weight.detach().to(torch.bfloat16))
    lin.load_state_dict({"weight": torch.ones(4, 8), "bias": torch.zeros(4)})
    assert torch.equal(cast_param(lin, "weight", torch.bfloat16), torch.ones(4, 8, dtype=torch.bfloat16))
    assert cast_param(lin, "bias", torch.float32) is lin.bias  # already that dtype: the parameter itself
    assert "_pvt_cast" not in nn.Linear(8, 4).state_dict()
    assert set(lin.state_dict()) == {"weight", "bias"}


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
        from pvt.kernels import triton_layer_norm
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
