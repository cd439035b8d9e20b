"""pvt.bench.cases: sizes, one case for ours and timm's, the results table (no timing assertions)."""

import pytest
import torch

import pvt
from pvt.bench.cases import Case, Result, format_results, make_step, parse_size, run_case


def _small():
    return pvt.create_model("pvt_v2_b0", embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


def test_parse_size():
    assert parse_size("224") == (224, 224)
    assert parse_size("800x1333") == (800, 1333)
    with pytest.raises(ValueError, match="N or HxW"):
        parse_size("big")
    with pytest.raises(ValueError, match="integers 1..4096"):
        parse_size("0x224")


def test_make_step_refuses_unknown_dtype_and_mode():
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        make_step(_small(), Case("pvt_v2_b0", dtype="float16"))
    with pytest.raises(ValueError, match="unknown mode 'eval'"):
        make_step(_small(), Case("pvt_v2_b0", mode="eval"))


def test_result_from_times():
    r = Result.from_times("pvt", Case("pvt_v2_b0", batch_size=4, size=(64, 96)), [0.5, 0.5], 2, page_faults=3.0)
    assert (r.img_per_s, r.latency_ms, r.latency_iqr_ms) == (8.0, 500.0, 0.0)
    assert (r.height, r.width, r.threads, r.page_faults, r.peak_mem_mb) == (64, 96, 2, 3.0, None)


def test_run_case_compare_infer_and_train():
    pytest.importorskip("timm")
    case = Case("pvt_v2_b0", batch_size=1, size=(64, 64))
    res = run_case(case, ("pvt", "timm"), warmup=0, repeats=2, memory=False)
    assert [r.impl for r in res] == ["pvt", "timm"]
    assert res[1].max_abs_diff < 1e-4 and res[1].cosine > 0.9999
    assert all(r.img_per_s > 0 and r.page_faults is not None and r.page_faults >= 0 for r in res)  # CPU rows record their faults
    table = format_results(res)
    assert "ours/x" in table and "timm" in table
    small = _small()
    before = small.head.weight.detach().clone()
    train = run_case(Case("pvt_v2_b0", batch_size=2, size=(64, 64), mode="train"), ("pvt",), warmup=0, repeats=1,
                     model=small)
    assert train[0].mode == "train" and train[0].peak_mem_mb > 0
    assert torch.equal(small.head.weight, before)  # the caller's model is not trained


def test_run_case_skips_an_implementation_it_cannot_build():
    said = []
    res = run_case(Case("pvt_v2_b0", batch_size=1, size=(64, 64)), ("pvt", "nope"), warmup=0, repeats=1,
                   memory=False, model=_small(), log=said.append)
    assert [r.impl for r in res] == ["pvt"] and said == ["skipping nope: unknown implementation 'nope'; "
                                                         "choose from pvt, timm, hf"]


def test_ratios_pair_eager_with_eager_and_compiled_with_compiled():
    def row(impl, rate):
        return Result(impl, "pvt_v2_b0", "infer", 8, 224, 224, "bfloat16", "cuda", 1, rate, 8e3 / rate, 0.0)

    table = format_results([row("pvt", 300.0), row("timm", 200.0), row("pvt+compile", 900.0),
                            row("timm+compile", 600.0)]).splitlines()
    ratios = {line.split()[2]: line.split()[-1] for line in table[2:]}
    assert ratios == {"pvt": "-", "timm": "1.50", "pvt+compile": "-", "timm+compile": "1.50"}
