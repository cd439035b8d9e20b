"""``--precision`` / ``--calibration`` of ``pvt eval`` and ``pvt predict`` (and pvt.evaluate / predict /
quantize): the precision is applied, reported, and close to float32 on a trained checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import pvt
from pvt.accel import capability
from pvt.cli import main


@pytest.fixture(scope="module")
def trained(stripes_run):
    data, run, _ = stripes_run
    return data, run / "best.safetensors"


def _eval(capsys, checkpoint, data, *flags):
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_in_every_precision(trained, capsys):
    data, ckpt = trained
    f32 = _eval(capsys, ckpt, data)
    assert (f32["precision"], f32["precision_reason"]) == ("float32", "default")
    for flags, precision in ((["--precision", "bf16"], "bfloat16"), (["--precision", "int8"], "int8"),
                             (["--precision", "int8", "--calibration", str(data / "train")], "int8")):
        r = _eval(capsys, ckpt, data, *flags)
        assert r["precision"] == precision and r["precision_reason"].startswith("requested")
        assert r["images"] == f32["images"]
        assert abs(r["loss"] - f32["loss"]) < 0.05 * f32["loss"] + 0.02  # the same model, rounded
    # the text form reports the precision on stderr
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--precision", "auto"]) == 0
    err = capsys.readouterr().err
    assert "precision: " in err and "auto: " in err


def test_auto_on_a_cpu_without_bf16_stays_float32(trained, capsys, monkeypatch):
    data, ckpt = trained
    monkeypatch.setattr(capability, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    r = _eval(capsys, ckpt, data, "--precision", "auto")
    assert r["precision"] == "float32" and "no native bfloat16" in r["precision_reason"]
    monkeypatch.setattr(capability, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert _eval(capsys, ckpt, data, "--precision", "auto")["precision"] == "bfloat16"


def test_predict_int8_agrees_with_float32(trained, capsys):
    data, ckpt = trained
    imgs = sorted(str(p) for p in (data / "val").rglob("*.png"))
    outs = {}
    for precision in ("float32", "int8"):
        assert main(["predict", "--checkpoint", str(ckpt), *imgs, "--json", "--precision", precision]) == 0
        captured = capsys.readouterr()
        outs[precision] = json.loads(captured.out)
        assert ("precision: int8 (requested" in captured.err) == (precision == "int8")
    for a, b in zip(outs["float32"], outs["int8"]):
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=0.05)


def test_precision_errors(trained, capsys):
    data, ckpt = trained
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--precision", "bf16",
                 "--calibration", str(data)]) == 2
    assert "calibration images are for int8" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--precision", "int8",
                 "--calibration", str(data / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pvt_quantize_takes_a_folder(make_stripes, tmp_path):
    data = make_stripes(tmp_path)
    model = pvt.create_model("pvt_v2_b0", num_classes=3, img_size=32)
    assert pvt.quantize(model, str(data / "train"), images=5) is model
    assert model.acceleration.int8 == "static"
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
