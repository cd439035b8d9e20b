"""`pvt models`, `pvt info`, `pvt complexity`, run in-process: exit codes, output formats and one-line
errors. The figures themselves are tested in tests/tools/test_reports.py."""

from __future__ import annotations

import csv
import json

from pvt.cli import main
from pvt.models.variants import VARIANTS


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, out: str, err: str, command: str) -> None:
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"pvt {command}: error: ")


def test_models_json(capsys):
    code, out, _ = _run(capsys, "models", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(VARIANTS)
    assert set(rows[0]) == {
        "name", "description", "family", "params", "params_without_head", "gflops", "gflops_modules_only",
        "attention_gflops", "paper",
    }


def test_models_markdown_and_text(capsys):
    code, out, _ = _run(capsys, "models", "--markdown")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 + len(VARIANTS)
    assert lines[0].startswith("| model | params (M) |") and "paper top-1 (%)" in lines[0]
    assert lines[2].startswith("| pvt_v1_tiny | ")
    code, out, _ = _run(capsys, "models", "--pattern", "pvt_v1_*")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:3] == ["model", "params", "(M)"]
    assert [line.split()[0] for line in lines[2:-1]] == [n for n in VARIANTS if n.startswith("pvt_v1_")]
    assert lines[-1].startswith("GFLOPs at 224x224")


def test_models_dense_and_pattern(capsys):
    code, out, _ = _run(capsys, "models", "--dense", "--pattern", "semfpn_pvt_v1_t*", "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["name"] == "semfpn_pvt_v1_tiny" and row["input_size"] == [512, 512]
    code, out, _ = _run(capsys, "models", "--pattern", "pvt_v2_b[01]", "--json")
    assert [r["name"] for r in json.loads(out)] == ["pvt_v2_b0", "pvt_v2_b1"]
    _one_line_error(*_run(capsys, "models", "--pattern", "nothing*"), "models")
    _, _, err = _run(capsys, "models", "--dense", "--pattern", "nothing*")
    assert "no dense-prediction model matches --pattern 'nothing*'" in err


def test_info_json_and_text(capsys):
    code, out, _ = _run(capsys, "info", "pvt_v2_b2", "--input-size", "97", "131", "--json")
    d = json.loads(out)
    assert code == 0 and d["name"] == "pvt_v2_b2" and d["input_size"] == [97, 131] and len(d["stages"]) == 4
    code, out, _ = _run(capsys, "info", "pvt_v1_small")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("pvt_v1_small  (") and lines[2].startswith("  GFLOPs at 224x224  ")
    assert "pos_embed, cls_token" in out and lines[-1].startswith("  paper            params_m=")


def test_info_dense_prediction_model(capsys):
    code, out, _ = _run(capsys, "info", "semfpn_pvt_v2_b0", "--json")
    d = json.loads(out)
    assert code == 0 and d["input_size"] == [512, 512] and d["head"] == "semfpn"


def test_info_errors(capsys):
    code, out, err = _run(capsys, "info", "pvt_v2_b9")
    _one_line_error(code, out, err, "info")
    assert "unknown model 'pvt_v2_b9'" in err and "did you mean pvt_v2_b" in err
    code, out, err = _run(capsys, "info", "pvt_v2_b0", "--input-size", "0", "224")
    _one_line_error(code, out, err, "info")
    assert "--input-size must be two positive integers" in err


def test_complexity_writes_csv_and_png(tmp_path, capsys):
    out_dir = tmp_path / "fig"
    code, out, _ = _run(capsys, "complexity", "--out", str(out_dir), "--sizes", "224", "448", "--models", "resnet50")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[-3:] == ["224", "448", "growth"] and lines[1].startswith("ResNet-50")
    assert lines[-1] == f"wrote {out_dir / 'figure4.csv'} and {out_dir / 'figure4.png'}"
    assert [r["input_size"] for r in csv.DictReader(open(out_dir / "figure4.csv", newline=""))] == ["224", "448"]
    assert (out_dir / "figure4.png").read_bytes()[:4] == b"\x89PNG"


def test_complexity_errors(tmp_path, capsys):
    code, out, err = _run(capsys, "complexity", "--out", str(tmp_path), "--models", "resnet5")
    _one_line_error(code, out, err, "complexity")
    assert "did you mean resnet50" in err
    _one_line_error(*_run(capsys, "complexity", "--out", str(tmp_path), "--sizes", "16"), "complexity")
    (tmp_path / "file").write_text("x")
    _one_line_error(*_run(capsys, "complexity", "--out", str(tmp_path / "file")), "complexity")
