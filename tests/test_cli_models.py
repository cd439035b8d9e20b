"""`pvt models`, `pvt info`, `pvt complexity`, run in-process."""

from __future__ import annotations

import csv
import json

import pytest

from pvt.cli import main
from pvt.variants import VARIANTS


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json(capsys):
    code, out, _ = _run(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows) == list(VARIANTS)
    for name, r in rows.items():
        v = VARIANTS[name]
        assert r["params"] == v.num_params
        assert r["paper"]["gflops"] == v.paper.gflops and r["paper"]["top1"] == v.paper.top1
        assert round(r["gflops"], 1) == v.paper.gflops, name
        assert r["gflops"] == pytest.approx(r["gflops_modules_only"] + r["attention_gflops"], abs=2e-4)
    assert rows["pvt_v2_b0"]["params_without_head"] == 3_409_760  # Table 2's "3.4M"
    assert rows["pvt_v2_b1"]["params_without_head"] == 13_496_000  # Table 2 says 13.1M
    assert rows["pvt_v2_b2"]["gflops"] == pytest.approx(4.0447, abs=1e-4)


def test_models_markdown_and_text(capsys):
    code, out, _ = _run(capsys, "models", "--markdown")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 + len(VARIANTS)
    assert lines[0].startswith("| model | params (M) |") and "paper top-1 (%)" in lines[0]
    assert "| pvt_v2_b0 | 3.67 | 3.41 | 3.4 | 0.57 | 0.53 | 0.6 | 70.5 |" in lines
    code, out, _ = _run(capsys, "models")
    assert code == 0 and "pvt_v1_large" in out and "9.83" in out


def test_info_json(capsys):
    code, out, _ = _run(capsys, "info", "pvt_v2_b0", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["params"] == 3_666_760
    assert d["gflops"] == pytest.approx(0.5714, abs=1e-4)
    assert [(s["height"], s["width"], s["channels"], s["stride"]) for s in d["stages"]] == [
        (56, 56, 32, 4), (28, 28, 64, 8), (14, 14, 160, 16), (7, 7, 256, 32)
    ]
    assert [s["kv_tokens"] for s in d["stages"]] == [49, 49, 49, 49]
    assert sum(s["gflops"] for s in d["stages"]) < d["gflops"]  # the head is outside the stages
    assert d["config"]["embed_dims"] == [32, 64, 160, 256]
    assert d["paper"]["params_m"] == 3.4 and d["paper"]["top1"] == 70.5


def test_info_odd_size_and_text(capsys):
    code, out, _ = _run(capsys, "info", "pvt_v2_b2", "--input-size", "97", "131", "--json")
    d = json.loads(out)
    assert code == 0 and d["input_size"] == [97, 131]
    assert [(s["height"], s["width"]) for s in d["stages"]] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    code, out, _ = _run(capsys, "info", "pvt_v1_small")
    assert code == 0 and "24,485,864" in out and "3.823" in out and "pos_embed, cls_token" in out


def test_info_dense_prediction_model(capsys):
    code, out, _ = _run(capsys, "info", "semfpn_pvt_v2_b0", "--json")
    d = json.loads(out)
    assert code == 0 and d["input_size"] == [512, 512]
    assert d["gflops"] == pytest.approx(d["paper"]["gflops"], abs=0.1)  # Table 5: 25.0
    assert d["params"] / 1e6 == pytest.approx(d["paper"]["params_m"], abs=0.06)


def test_info_unknown_name(capsys):
    code, out, err = _run(capsys, "info", "pvt_v2_b9")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown model 'pvt_v2_b9'" in err and "did you mean pvt_v2_b" in err


def test_complexity_writes_csv_and_png(tmp_path, capsys):
    code, out, _ = _run(capsys, "complexity", "--out", str(tmp_path / "fig"), "--sizes", "224", "448")
    assert code == 0 and "wrote" in out
    rows = list(csv.DictReader(open(tmp_path / "fig" / "figure4.csv")))
    got = {(r["model"], int(r["input_size"])): float(r["gflops"]) for r in rows}
    assert len(got) == 12  # six models, two sizes
    assert got[("pvt_v2_b2_li", 224)] == pytest.approx(3.9184, abs=1e-4)
    assert got[("resnet50", 448)] / got[("resnet50", 224)] == pytest.approx(4.0, abs=0.01)
    assert got[("vit_small_patch16", 448)] / got[("vit_small_patch16", 224)] > 4.5
    png = (tmp_path / "fig" / "figure4.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_complexity_bad_model(tmp_path, capsys):
    code, _, err = _run(capsys, "complexity", "--out", str(tmp_path), "--models", "resnet5")
    assert code == 2 and "did you mean resnet50" in err


def test_models_dense_and_pattern(capsys):
    code, out, _ = _run(capsys, "models", "--dense", "--pattern", "semfpn_pvt_v1_t*", "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["name"] == "semfpn_pvt_v1_tiny" and row["input_size"] == [512, 512]
    assert row["paper"]["gflops"] == 33.2 and row["gflops"] == pytest.approx(33.2, abs=0.06)  # Table 5 (v1 row)
    assert row["gflops_modules_only"] < 31.5
    code, out, _ = _run(capsys, "models", "--pattern", "pvt_v2_b[01]", "--json")
    assert [r["name"] for r in json.loads(out)] == ["pvt_v2_b0", "pvt_v2_b1"]
    code, _, err = _run(capsys, "models", "--pattern", "nothing*")
    assert code == 2 and "no model matches" in err
