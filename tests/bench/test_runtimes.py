"""pvt.bench.runtimes: every runtime runner works end to end in its own process on a tiny case, agrees
with our float32 logits, and the busy-core helper starts and stops its processes (no timing assertions)."""

from __future__ import annotations

import json
import os

import pytest

from pvt.bench import runtimes
from pvt.bench.runtimes import Runner, benchmark_runtimes, busy_cores, format_runtime_results, runners_for
from pvt.cli import main

TINY = dict(batch_size=1, size=(64, 64), warmup=1, repeats=1, rounds=1)


def test_runners_for_takes_what_each_runtime_offers():
    got = runners_for(["pvt", "onnxruntime", "hf"], ["bfloat16", "int8"], [1, 2])
    assert [(r.runtime, r.precision, r.threads) for r in got] == [
        ("pvt", "bfloat16", 1), ("hf", "bfloat16", 1), ("pvt", "int8", 1), ("onnxruntime", "int8", 1),
        ("pvt", "bfloat16", 2), ("hf", "bfloat16", 2), ("pvt", "int8", 2), ("onnxruntime", "int8", 2),
    ]
    with pytest.raises(ValueError, match="unknown runtime"):
        runners_for(["tensorrt"], ["float32"], [1])


@pytest.mark.slow  # 85 s on 2 cores; test_cli_runtime_runners runs the runners in the default suite
def test_every_runtime_in_its_own_process():
    pytest.importorskip("onnxruntime")
    wanted = [Runner("pvt", "float32", 1), Runner("pvt", "int8", 1), Runner("pvt", "bfloat16", 1),
              Runner("timm", "float32", 1), Runner("timm", "int8", 1), Runner("onnxruntime", "int8", 1),
              Runner("openvino", "bfloat16", 1), Runner("openvino", "int8", 1)]
    logged = []
    results = benchmark_runtimes(["pvt_v2_b0"], wanted, wait_policy="passive", log=logged.append, **TINY)
    expected = [r for r in wanted if runtimes.available(r.runtime)]
    assert [(r.impl, r.dtype, r.threads) for r in results] == [(r.runtime, r.precision, r.threads) for r in expected]
    for r in results:
        assert r.img_per_s > 0 and r.batch_size == 1 and (r.height, r.width) == (64, 64)
        assert r.extra["wait_policy"] == "passive" and len(r.extra["rounds"]) == 1
        # the same weights everywhere: logits close to our float32 ones (int8 / bf16 rounding)
        assert r.cosine is not None and r.cosine > (0.999999 if r.dtype == "float32" else 0.9), (r.impl, r.dtype)
    table = format_runtime_results(results).splitlines()
    assert table[0].split()[:5] == ["model", "thr", "batch", "runtime", "precision"]
    assert len(table) == 2 + len(results)
    timm32 = next(r for r in results if (r.impl, r.dtype) == ("timm", "float32"))
    ours32 = table[2].split()
    assert ours32[3:5] == ["pvt", "float32"]
    assert float(ours32[10]) == pytest.approx(results[0].img_per_s / timm32.img_per_s, abs=0.006)


def test_a_failing_runner_reports_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="pvt/float32/1t failed"):
        runtimes.run_runner(Runner("pvt", "float32", 1), "pvt_v2_b0", {"input": str(tmp_path / "missing.npy")})
    for bad in ("lazy", "spin=", "spin=many"):
        with pytest.raises(ValueError, match="wait policy"):
            runtimes.run_runner(Runner("pvt", "float32", 1), "pvt_v2_b0", {}, wait_policy=bad)
    assert runtimes.wait_policy_env("spin=20000") == {"GOMP_SPINCOUNT": "20000"}
    assert runtimes.wait_policy_env("passive") == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert runtimes.wait_policy_env("default") == {}


def test_busy_cores_start_and_stop():
    with busy_cores(2) as pids:
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # alive
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ValueError):
        with busy_cores(-1):
            pass


def test_cli_runtime_runners(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["benchmark", "pvt_v2_b0", "--precision", "auto", "int8", "--rounds", "1", "--busy-cores", "1",
                 "-b", "1", "--img-size", "64", "--repeats", "1", "--warmup", "1", "--threads", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "# precision auto -> " in printed and "busy cores 1" in printed and "flags:" in printed
    rows = json.loads(out.read_text())
    assert [r["impl"] for r in rows] == ["pvt", "pvt"] and rows[-1]["dtype"] == "int8"
    assert all(r["extra"]["busy_cores"] == 1 for r in rows)


def test_train_runners_and_the_compile_runtime_are_offered():
    got = runners_for(["pvt", "timm", "hf"], ["float32", "int8"], [1], "train")
    assert [(r.runtime, r.precision, r.mode) for r in got] == [("pvt", "float32", "train"), ("timm", "float32", "train"),
                                                                ("hf", "float32", "train")]
    assert got[0].label == "pvt/float32/1t/train"
    with pytest.raises(ValueError, match="unknown train runtime 'onnxruntime'"):
        runners_for(["onnxruntime"], ["float32"], [1], "train")
    # compile: our plain model under torch.compile, float32 only
    assert [(r.runtime, r.precision) for r in runners_for(["compile"], ["float32", "bfloat16", "int8"], [1])] == [
        ("compile", "float32")]


def test_cli_train_step_of_ours_and_timms_each_in_its_own_process(tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "t.json"
    assert main(["benchmark", "pvt_v2_b0", "--mode", "train", "--compare", "--runtimes", "pvt", "timm", "-b", "2",
                 "--img-size", "64", "--rounds", "1", "--repeats", "1", "--warmup", "1", "--threads", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "one training step per call: mixup / cutmix with label smoothing" in printed
    rows = [line.split() for line in printed.splitlines() if line.startswith("pvt_v2_b0")]
    assert [r[3:5] for r in rows] == [["pvt", "float32"], ["timm", "float32"]]
    results = json.loads(out.read_text())
    assert [(r["impl"], r["mode"], r["batch_size"]) for r in results] == [("pvt", "train", 2), ("timm", "train", 2)]
    assert all(r["img_per_s"] > 0 for r in results)
    # int8 has no training step: one line, before anything runs
    assert main(["benchmark", "--mode", "train", "--precision", "int8"]) == 2
    assert "int8 times CPU inference only" in capsys.readouterr().err


@pytest.mark.slow  # Inductor compiles B0 at 64x64 in ~1-3 min on 2 cores
def test_compile_runner_reports_its_compile_time():
    results = benchmark_runtimes(["pvt_v2_b0"], [Runner("pvt", "float32", 1), Runner("compile", "float32", 1)],
                                 **{**TINY, "rounds": 2})
    compiled = results[1]
    assert compiled.impl == "compile" and compiled.cosine > 0.99999 and len(compiled.extra["compile_s"]) == 2
    assert "; compile " in format_runtime_results(results).splitlines()[-1]
