"""pvt.bench.onnx: an exported file timed in onnxruntime beside our model."""

import pytest

import pvt
from pvt.bench.cases import Case, format_results
from pvt.bench.onnx import run_onnxruntime


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from pvt.tools.export import export_model

    small = pvt.create_model("pvt_v2_b0", embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    path = export_model(small.eval(), "onnx", tmp_path_factory.mktemp("onnx") / "small.onnx")
    return small, path


def test_onnxruntime_times_the_file_beside_our_model(small_onnx):
    small, path = small_onnx  # the file need not match the model
    case = Case("pvt_v2_b0", batch_size=2, size=(64, 64), mode="train")
    alone = run_onnxruntime(str(path), case, warmup=0, repeats=2)
    assert [r.impl for r in alone] == ["onnxruntime"] and alone[0].img_per_s > 0
    assert alone[0].mode == "infer" and alone[0].extra == {"onnx": str(path)}  # the graph only infers
    both = run_onnxruntime(str(path), case, warmup=0, repeats=2, model=small)
    assert [r.impl for r in both] == ["pvt", "onnxruntime"]
    ort_row = format_results(both).splitlines()[-1].split()
    assert ort_row[2] == "onnxruntime" and ort_row[-1] != "-"  # ours/onnxruntime from the same run
    assert float(ort_row[-1]) == pytest.approx(both[0].img_per_s / both[1].img_per_s, abs=0.006)


def test_onnxruntime_refusals(small_onnx, tmp_path):
    _, path = small_onnx
    with pytest.raises(ValueError, match="float32 graph"):
        run_onnxruntime(str(path), Case("pvt_v2_b0", dtype="bfloat16"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        run_onnxruntime(str(bad), Case("pvt_v2_b0"))
