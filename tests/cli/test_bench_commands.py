"""`pvt benchmark`, run in-process on tiny cases: exit codes, output, one-line errors (no timing
assertions). The benchmark itself is tested in tests/bench/."""

import json

import pytest

from pvt.cli import main

_TINY = ["-b", "1", "--img-size", "64", "--repeats", "1", "--warmup", "0"]


def test_cli_benchmark_json_and_errors(tmp_path, capsys, monkeypatch):
    from pvt.accel import runtime

    monkeypatch.delenv("PVT_ALLOCATOR", raising=False)
    out = tmp_path / "r.json"
    argv = ["benchmark", "pvt_v2_b0", *_TINY]
    assert main(argv + ["--dtype", "bfloat16", "--no-memory", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["dtype"] == "bfloat16" and rows[0]["cosine"] > 0.99
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    # a CPU row records its page faults (the median per timed call; None where not measured) and the
    # table's faults column prints that figure
    faults = rows[0]["page_faults"]
    assert isinstance(faults, (int, float)) and printed[3].split()[10] == f"{faults:.0f}"
    assert (captured.out + captured.err).count("max|diff|") == 1  # one case: its table once, not again as progress
    # the pvt command tunes the allocator where glibc allows it, and says so
    expected = "tuned" if runtime._glibc() is not None else "default"
    assert printed[0].startswith("# torch ") and printed[0].endswith(f"allocator {expected}")
    assert printed[1].split()[:3] == ["model", "mode", "impl"] and printed[3].split()[:3] == ["pvt_v2_b0", "infer", "pvt"]
    monkeypatch.setenv("PVT_ALLOCATOR", "nonsense")
    assert main(argv) == 2
    assert "PVT_ALLOCATOR='nonsense' is not an allocator mode" in capsys.readouterr().err
    monkeypatch.delenv("PVT_ALLOCATOR")
    for bad, message in [
        (["pvt_v9"], "unknown model 'pvt_v9'"),
        (["--onnx", str(tmp_path / "none.onnx")], "goes with --backend onnxruntime"),
        (["--precision", "int8", "--mode", "train"], "CPU inference"),
        (["--busy-cores", "1", "--compile"], "--in-process for those"),
        (["--threads", "1", "2"], "several --threads"),
        # runner options are refused where they would be ignored (--precision int8 timing float32)
        (["--in-process", "--precision", "int8", "--rounds", "3"], "--precision, --rounds: options of the runtime runners"),
        (["--img-size", "big"], "is not N or HxW"),
        (["--backend", "onnxruntime", "--onnx", str(tmp_path / "none.onnx")], "does not exist"),
    ]:
        assert main(["benchmark", *bad]) == 2, bad
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("pvt benchmark: error: ") and message in err
    # sizes out of their bounds are usage errors of the option itself (tests/cli/test_bounds.py)
    for bad, message in [(["--threads", "0"], "argument --threads: '0': expected an integer 1..1024"),
                         (["-b", "0"], "argument --batch-size/-b: '0': expected an integer 1..8192")]:
        with pytest.raises(SystemExit) as e:
            main(["benchmark", *bad])
        assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"pvt benchmark: error: {message}"


def test_cli_benchmark_onnxruntime_compare(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # any file with one float32 NCHW input will do: a one-node graph saves exporting a model here
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["logits"])], "pool",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    assert main(["benchmark", "pvt_v2_b0", "--backend", "onnxruntime", "--onnx", str(path), "--compare", *_TINY]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in table[3:]] == ["pvt", "onnxruntime"]


def test_cli_benchmark_times_dense_models_at_the_given_size(tmp_path, capsys):
    # every row names the size it ran at, and the detector's transform keeps that size (no resize to its
    # 800 px training scale)
    out = tmp_path / "dense.json"
    argv = ["benchmark", "retinanet_pvt_v2_b0", "mask_rcnn_pvt_v2_b0", "semfpn_pvt_v2_b0", "-b", "1",
            "--img-size", "64x96", "256", "--repeats", "1", "--warmup", "0", "--no-memory", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["height"], r["width"]) for r in rows] == [
        (m, h, w) for m in ("retinanet_pvt_v2_b0", "mask_rcnn_pvt_v2_b0", "semfpn_pvt_v2_b0")
        for h, w in ((64, 96), (256, 256))]
    import torch

    from pvt.bench import Case, build_model

    for name in ("retinanet_pvt_v2_b0", "atss_pvt_v2_b0"):
        detector = build_model(Case(name, 1, (64, 96))).eval()
        batch, _ = detector.transform([torch.rand(3, 64, 96)])
        assert batch.image_sizes == [(64, 96)], name
    capsys.readouterr()
    assert main(["benchmark", "retinanet_pvt_v2_b0", "--compare"]) == 2
    assert "dense models are timed for PyTorch inference of ours alone" in capsys.readouterr().err
    assert main(["benchmark", "retinanet_pvt_v2_b9"]) == 2
    assert "retinanet_pvt_v2_b9" in capsys.readouterr().err
