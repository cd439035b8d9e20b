"""pvt.accel.capability: CPU flags decide ``auto`` precision (mocked CPUs, so it runs anywhere)."""

from __future__ import annotations

import pytest

import pvt
from pvt.accel import accelerate, capability

ZEN3 = frozenset({"avx2", "fma", "sse4_2"})  # no AVX-512, no bf16, no VNNI
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx512f", "amx_bf16", "amx_int8", "amx_tile"})
ICE_LAKE = frozenset({"avx512f", "avx512_vnni"})  # VNNI, no bf16


@pytest.mark.parametrize("flags,picked", [(ZEN3, "float32"), (ICE_LAKE, "float32"), (ZEN4, "bfloat16"),
                                           (SAPPHIRE_RAPIDS, "bfloat16")])
def test_auto_picks_bf16_only_on_cpus_that_multiply_it(flags, picked):
    precision, reason = capability.resolve_precision("auto", "cpu", flags)
    assert precision == picked
    assert reason.startswith("auto: ")
    assert reason.startswith("auto: this CPU has no native") == (picked == "float32")


def test_explicit_requests_are_kept_and_warned_about():
    assert capability.resolve_precision("bf16", "cpu", ZEN3)[0] == "bfloat16"
    assert "slow" in capability.resolve_precision("bfloat16", "cpu", ZEN3)[1]
    assert capability.resolve_precision("bfloat16", "cpu", ZEN4) == ("bfloat16", "requested")
    assert "7-bit" in capability.resolve_precision("int8", "cpu", ZEN3)[1]
    assert capability.resolve_precision("FP32", "cpu", ZEN3) == ("float32", "requested")
    assert capability.resolve_precision("auto", "cuda:1", ZEN3)[0] == "bfloat16"
    with pytest.raises(ValueError, match="CPU path"):
        capability.resolve_precision("int8", "cuda")
    with pytest.raises(ValueError, match="auto, float32, bfloat16, int8"):
        capability.resolve_precision("fp8")


def test_flag_checks():
    assert capability.has_bf16(ZEN4) and capability.has_bf16(SAPPHIRE_RAPIDS) and not capability.has_bf16(ZEN3)
    assert capability.has_vnni(ICE_LAKE) and capability.has_vnni(SAPPHIRE_RAPIDS) and not capability.has_vnni(ZEN3)
    flags = capability.cpu_flags()
    assert isinstance(flags, frozenset) and flags and all(f == f.lower() for f in flags)
    assert isinstance(capability.cpu_model(), str) and capability.cpu_model()


@pytest.mark.parametrize("flags,picked", [(ZEN3, "float32"), (ZEN4, "bfloat16")])
def test_accelerate_auto_follows_the_mocked_cpu(monkeypatch, flags, picked):
    monkeypatch.setattr(capability, "cpu_flags", lambda: flags)
    model = accelerate(pvt.create_model("pvt_v2_b0", accelerate=False), precision="auto")
    assert model.acceleration.precision == picked
    with pytest.raises(ValueError, match="quantize"):
        accelerate(model, precision="int8")
