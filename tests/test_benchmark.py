"""`pvt benchmark`: smoke tests on tiny cases (no timing assertions)."""

import json

import pytest
import torch

import pvt
from pvt.benchmark import Case, format_results, parse_size, peak_memory, reference_model, run_case, time_interleaved
from pvt.cli import main


def test_parse_size():
    assert parse_size("224") == (224, 224)
    assert parse_size("800x1333") == (800, 1333)
    with pytest.raises(ValueError, match="N or HxW"):
        parse_size("big")


def test_time_interleaved_runs_every_step_in_rounds():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(steps, warmup=1, repeats=3)
    assert [len(v) for v in times.values()] == [3, 3]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]


def test_peak_memory_sees_a_temporary():
    def step():
        a = torch.empty(1_000_000)  # 4 MB, freed again
        b = torch.empty(500_000)
        return a.numel() + b.numel()

    assert 5_900_000 <= peak_memory(step) <= 6_500_000


@pytest.mark.parametrize("impl", ["timm", "hf"])
def test_reference_models_hold_our_weights(impl):
    pytest.importorskip({"timm": "timm", "hf": "transformers"}[impl])
    ours = pvt.create_model("pvt_v2_b0", num_classes=10).eval()
    ref = reference_model(impl, "pvt_v2_b0", ours)
    x = torch.randn(1, 3, 96, 64)
    with torch.inference_mode():
        assert (ref(x) - ours(x)).abs().max().item() < 1e-4


def test_run_case_compare_infer_and_train():
    pytest.importorskip("timm")
    case = Case("pvt_v2_b0", batch_size=1, size=(64, 64))
    res = run_case(case, ("pvt", "timm"), warmup=0, repeats=2, memory=False)
    assert [r.impl for r in res] == ["pvt", "timm"]
    assert res[1].max_abs_diff < 1e-4 and res[1].cosine > 0.9999
    assert all(r.img_per_s > 0 for r in res)
    table = format_results(res)
    assert "ours/x" in table and "timm" in table
    small = pvt.create_model("pvt_v2_b0", embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    before = small.head.weight.detach().clone()
    train = run_case(Case("pvt_v2_b0", batch_size=2, size=(64, 64), mode="train"), ("pvt",), warmup=0, repeats=1,
                     model=small)
    assert train[0].mode == "train" and train[0].peak_mem_mb > 0
    assert torch.equal(small.head.weight, before)  # the caller's model is not trained


def test_cli_benchmark_json_and_errors(tmp_path, capsys, monkeypatch):
    from pvt.accel import runtime

    monkeypatch.delenv("PVT_ALLOCATOR", raising=False)
    out = tmp_path / "r.json"
    argv = ["benchmark", "pvt_v2_b0", "-b", "1", "--img-size", "64", "--repeats", "1", "--warmup", "0"]
    assert main(argv + ["--dtype", "bfloat16", "--no-memory", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["dtype"] == "bfloat16" and rows[0]["cosine"] > 0.99
    assert rows[0]["page_faults"] >= 0
    # the pvt command tunes the allocator where glibc allows it, and says so
    expected = "tuned" if runtime._glibc() is not None else "default"
    assert f"allocator {expected}" in capsys.readouterr().out
    monkeypatch.setenv("PVT_ALLOCATOR", "nonsense")
    assert main(argv) == 2
    assert "PVT_ALLOCATOR='nonsense' is not an allocator mode" in capsys.readouterr().err
    monkeypatch.delenv("PVT_ALLOCATOR")
    assert main(["benchmark", "pvt_v9"]) == 2
    assert "unknown model 'pvt_v9'" in capsys.readouterr().err
    assert main(["benchmark", "--backend", "onnxruntime"]) == 2
    assert "needs --onnx" in capsys.readouterr().err


def test_ratios_pair_eager_with_eager_and_compiled_with_compiled():
    from pvt.benchmark import Result

    def row(impl, rate):
        return Result(impl, "pvt_v2_b0", "infer", 8, 224, 224, "bfloat16", "cuda", 1, rate, 8e3 / rate, 0.0)

    table = format_results([row("pvt", 300.0), row("timm", 200.0), row("pvt+compile", 900.0),
                            row("timm+compile", 600.0)]).splitlines()
    ratios = {line.split()[2]: line.split()[-1] for line in table[2:]}
    assert ratios == {"pvt": "-", "timm": "1.50", "pvt+compile": "-", "timm+compile": "1.50"}


def test_onnxruntime_backend_times_the_file_beside_our_model(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from pvt.benchmark import run_onnxruntime
    from pvt.export import export_model

    small = pvt.create_model("pvt_v2_b0", embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    path = export_model(small.eval(), "onnx", tmp_path / "small.onnx")  # the file need not match the model
    case = Case("pvt_v2_b0", batch_size=2, size=(64, 64))
    alone = run_onnxruntime(str(path), case, warmup=0, repeats=2)
    assert [r.impl for r in alone] == ["onnxruntime"] and alone[0].img_per_s > 0
    both = run_onnxruntime(str(path), case, warmup=0, repeats=2, model=small)
    assert [r.impl for r in both] == ["pvt", "onnxruntime"]
    ort_row = format_results(both).splitlines()[-1].split()
    assert ort_row[2] == "onnxruntime" and float(ort_row[-1]) > 0  # ours/onnxruntime from the same run
    argv = ["benchmark", "pvt_v2_b0", "--backend", "onnxruntime", "--onnx", str(path), "--compare",
            "-b", "1", "--img-size", "64", "--repeats", "1", "--warmup", "0"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert " pvt " in table and " onnxruntime " in table
