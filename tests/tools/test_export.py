"""`pvt export`: exported files accept other batch sizes and image sizes and match PyTorch."""

import pytest
import torch

import pvt
from pvt.cli import main
from pvt.models.variants import get_variant
from pvt.tools.export import check_export, export_min_size, export_model, load_model, run_exported
from pvt.weights.checkpoint import save_model

TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), num_classes=5)


def tiny(name: str) -> pvt.PyramidVisionTransformer:
    return pvt.PyramidVisionTransformer(get_variant(name).config.replace(**TINY)).eval()


def test_onnx_runs_in_onnxruntime_at_two_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny("pvt_v2_b0")
    path = export_model(model, "onnx", tmp_path / "m.onnx")
    diffs = check_export(model, "onnx", path, sizes=[(224, 224), (97, 131)])
    assert [s for s, _ in diffs] == [(224, 224), (97, 131)]
    assert max(d for _, d in diffs) < 1e-4


def test_v1_torchscript_resizes_its_position_embedding(tmp_path):
    model = tiny("pvt_v1_tiny")
    path = export_model(model, "torchscript", tmp_path / "m.pt")
    diffs = check_export(model, "torchscript", path, sizes=[(224, 224), (96, 160)])
    assert max(d for _, d in diffs) < 1e-4
    # the position embedding really is resized: another size gives another output shape path
    out = run_exported("torchscript", path, torch.randn(1, 3, 128, 64))
    assert out.shape == (1, 5)


def test_min_export_size_and_bad_arguments(tmp_path):
    model = pvt.create_model("pvt_v2_b0")
    assert (model.min_input_size, export_min_size(model)) == (29, 61)
    with pytest.raises(ValueError, match="choose from onnx, torchscript, exported-program"):
        export_model(model, "tflite", tmp_path / "m.tflite")
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_model(model, "exported-program", tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="neither a registered model"):
        load_model(str(tmp_path / "missing.pth"))


def test_own_format_checkpoint_round_trip(tmp_path):
    model = tiny("pvt_v2_b2_li")
    save_model(model, tmp_path / "w.safetensors", variant="pvt_v2_b2_li")
    back = load_model(str(tmp_path / "w.safetensors"))
    assert back.config == model.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_cli_export_torchscript_with_check(tmp_path, capsys):
    model = tiny("pvt_v2_b0")
    save_model(model, tmp_path / "w.safetensors", variant="pvt_v2_b0")
    out = tmp_path / "w.pt"
    assert main(["export", str(tmp_path / "w.safetensors"), "--format", "torchscript", "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "H, W >= " in text and text.count("check ") == 2
    assert out.is_file()
    assert main(["export", "pvt_v9", "--out", str(out)]) == 2
    assert "neither a registered model" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_full_models_onnx(tmp_path, name):
    pytest.importorskip("onnxruntime")
    model = pvt.create_model(name).eval()
    path = export_model(model, "onnx", tmp_path / "m.onnx")
    assert max(d for _, d in check_export(model, "onnx", path)) < 1e-4


@pytest.mark.slow
def test_exported_program_dynamic(tmp_path):
    model = tiny("pvt_v1_tiny")
    path = export_model(model, "exported-program", tmp_path / "m.pt2")
    assert max(d for _, d in check_export(model, "exported-program", path)) < 1e-4


@pytest.mark.parametrize("calibrated", [False, True], ids=["dynamic", "static-qdq"])
def test_int8_onnx_runs_in_onnxruntime_and_openvino(tmp_path, calibrated):
    pytest.importorskip("onnxruntime")
    import onnx

    from pvt.tools.export import quantize_onnx

    model = tiny("pvt_v2_b0")
    src = export_model(model, "onnx", tmp_path / "m.onnx")
    images = torch.randn(4, 3, 96, 96) if calibrated else None
    out = quantize_onnx(src, tmp_path / "m_int8.onnx", images)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ({"QuantizeLinear", "DequantizeLinear"} if calibrated else {"DynamicQuantizeLinear", "MatMulInteger"}) <= ops
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    integer = sum(n.op_type in ("MatMulInteger", "DequantizeLinear") for n in onnx.load(str(out)).graph.node)
    assert integer >= linears  # every linear layer's product is integer (attention's products stay float)
    x = torch.randn(3, 3, 97, 131)  # other batch and size than the export example
    with torch.no_grad():
        ref = model(x)
    got = run_exported("onnx", out, x)
    assert got.shape == ref.shape
    assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99
    try:
        import openvino as ov
    except ImportError:
        return
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got_ov = torch.from_numpy(compiled(x.numpy())[0])
    assert torch.nn.functional.cosine_similarity(got_ov.flatten(), ref.flatten(), dim=0) > 0.99


def test_cli_export_int8(tmp_path, capsys, make_stripes):
    pytest.importorskip("onnxruntime")
    data = make_stripes(tmp_path / "imgs")
    model = tiny("pvt_v2_b0")
    save_model(model, tmp_path / "w.safetensors", variant="pvt_v2_b0")
    out = tmp_path / "q.onnx"
    assert main(["export", str(tmp_path / "w.safetensors"), "--quantize", "int8", "--calibration", str(data),
                 "--out", str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "int8 (static QDQ, 48 calibration images)" in printed and printed.count("check ") == 2
    assert out.is_file()
    assert main(["export", "pvt_v2_b0", "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "ONNX" in capsys.readouterr().err


def test_float_export_creates_a_missing_parent_folder_as_int8_export_does(tmp_path):
    out = tmp_path / "new" / "sub" / "w.pt"
    assert export_model(tiny("pvt_v2_b0"), "torchscript", out) == out and out.is_file()


def test_sigterm_during_export_leaves_no_temporary_file(tmp_path):
    """SIGTERM stops pvt export as Ctrl-C does (exit 143, one line), so the writer removes its temporary
    file; it arrives here at the write point (the commit of the written file)."""
    import os
    import subprocess
    import sys

    save_model(tiny("pvt_v2_b0"), tmp_path / "w.safetensors", variant="pvt_v2_b0")
    out = tmp_path / "out" / "w.pt"
    out.parent.mkdir()
    code = ("import os, signal, sys, pvt.base.io; real = pvt.base.io._commit\n"
            "def commit(tmp, path):\n    os.kill(os.getpid(), signal.SIGTERM)\n    real(tmp, path)\n"
            "pvt.base.io._commit = commit\nfrom pvt.cli import main\nsys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "export", str(tmp_path / "w.safetensors"), "--format",
                           "torchscript", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 143 and proc.stderr.strip() == "pvt export: interrupted", proc.stderr[-2000:]
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary
