"""pvt.tools.reports: the variant and dense-prediction tables, one model's description, Figure 4."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pvt
from pvt.models.variants import VARIANTS
from pvt.tools import reports


def _meta_count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in pvt.create_model(name, **kwargs).parameters())


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return {r["name"]: r for r in reports.model_rows()}


# ------------------------------------------------------------------------------ Table 2
def test_model_rows_cover_every_variant_with_its_own_counts(rows):
    assert list(rows) == list(VARIANTS)
    for name, r in rows.items():
        assert r["params"] == _meta_count(name), name
        assert r["params_without_head"] == _meta_count(name, num_classes=0), name  # counted, not a formula
        assert r["paper"] == dataclasses.asdict(pvt.get_variant(name).paper)
        assert r["gflops"] == pytest.approx(r["gflops_modules_only"] + r["attention_gflops"], abs=2e-4)


def test_model_rows_match_table2_to_the_printed_digit(rows):
    for name, r in rows.items():
        if r["paper"]["gflops"] is None:  # SegFormer's MiT rows: no ImageNet figures in its paper
            continue
        assert round(r["gflops"], 1) == r["paper"]["gflops"], name
        counted = {round(r["params"] / 1e6, 1), round(r["params_without_head"] / 1e6, 1)}
        if name == "pvt_v2_b1":  # Table 2's B1 size matches neither count, with or without the head
            assert r["paper"]["params_m"] not in counted
        else:  # B0's 3.4M is the count without the head, every other row the whole model's
            assert r["paper"]["params_m"] in counted, name


def test_model_rows_pattern():
    assert [r["name"] for r in reports.model_rows("pvt_v2_b[01]")] == ["pvt_v2_b0", "pvt_v2_b1"]
    assert reports.model_rows("nothing*") == []


def test_render_markdown_and_text(rows):
    picked = [rows["pvt_v2_b0"], rows["pvt_v1_large"]]
    md = reports.render_markdown(picked).splitlines()
    assert md[0] == (
        "| model | params (M) | w/o head (M) | paper params (M) | GFLOPs | modules only | paper GFLOPs | paper top-1 (%) |"
    )
    assert md[1] == "|:---|---:|---:|---:|---:|---:|---:|---:|"
    assert md[2] == "| pvt_v2_b0 | 3.67 | 3.41 | 3.4 | 0.57 | 0.53 | 0.6 | 70.5 |"
    text = reports.render_text(picked).splitlines()
    assert len(text) == 2 + len(picked) + 1
    assert text[0].startswith("model ") and set(text[1]) == {"-", " "}
    assert text[3].split()[:2] == ["pvt_v1_large", "61.37"] and text[3].split()[4] == "9.83"
    assert text[-1].startswith("GFLOPs at 224x224, one multiply-add = one FLOP")


# ------------------------------------------------------------------------------ one model
def test_variant_info_stages_and_config():
    d = reports.info_dict("pvt_v2_b0")
    assert d["kind"] == "classification" and d["input_size"] == [224, 224]
    assert d["params"] == _meta_count("pvt_v2_b0")
    assert d["official_num_params"] == VARIANTS["pvt_v2_b0"].num_params
    assert d["gflops"] == pytest.approx(reports.model_rows("pvt_v2_b0")[0]["gflops"], abs=1e-4)
    assert [(s["height"], s["width"], s["channels"], s["stride"]) for s in d["stages"]] == [
        (56, 56, 32, 4), (28, 28, 64, 8), (14, 14, 160, 16), (7, 7, 256, 32)
    ]
    assert [s["kv_tokens"] for s in d["stages"]] == [49, 49, 49, 49]
    assert sum(s["gflops"] for s in d["stages"]) < d["gflops"]  # the head is outside the stages
    assert d["config"]["embed_dims"] == [32, 64, 160, 256]
    assert d["paper"]["params_m"] == 3.4 and d["paper"]["top1"] == 70.5


def test_variant_info_odd_size_class_token_and_text():
    d = reports.info_dict("pvt_v2_b2", (97, 131))
    assert d["input_size"] == [97, 131]
    assert [(s["height"], s["width"]) for s in d["stages"]] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    v1 = reports.variant_info("pvt_v1_small")
    assert v1["stages"][-1]["tokens"] == 7 * 7 + 1  # the class token joins the last stage
    text = reports.render_info(v1)
    assert text.splitlines()[0].startswith("pvt_v1_small  (")
    assert f"{v1['params']:,}" in text and f"{v1['gflops']:.3f}" in text
    assert "switches         pos_embed, cls_token" in text


def test_dense_info_and_rows():
    d = reports.info_dict("semfpn_pvt_v2_b0")
    assert d["input_size"] == [512, 512] and d["counted"] == "model(x)"
    assert d["gflops"] == pytest.approx(d["paper"]["gflops"], abs=0.1)  # Table 5: 25.0
    assert d["params"] / 1e6 == pytest.approx(d["paper"]["params_m"], abs=0.06)
    assert "counted          model(x) (semfpn on pvt_v2_b0)" in reports.render_info(d)
    (row,) = reports.dense_rows("semfpn_pvt_v1_t*")
    assert row["name"] == "semfpn_pvt_v1_tiny" and row["input_size"] == [512, 512]
    assert row["paper"]["gflops"] == 33.2 and row["gflops"] == pytest.approx(33.2, abs=0.06)  # Table 5 (v1 row)
    assert row["gflops_modules_only"] < 31.5
    assert reports.render_markdown([row], dense=True).splitlines()[2].startswith("| semfpn_pvt_v1_tiny | ")
    assert reports.dense_info("retinanet_pvt_v2_b0", (256, 320))["counted"] == "model.forward_dummy(x)"


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'pvt_v2_b9'; did you mean pvt_v2_b"):
        reports.info_dict("pvt_v2_b9")
    with pytest.raises(ValueError, match="did you mean retinanet_pvt_v2_b0"):
        reports.info_dict("retinanet_pvt2_b0")


# ------------------------------------------------------------------------------ Figure 4
def test_complexity_rows_and_text():
    rows = reports.complexity_rows(["resnet50", "pvt_v2_b2_li", "pvt_v2_b0"], [224, 448])
    got = {(r["model"], r["input_size"]): r for r in rows}
    assert len(got) == 6 and got[("resnet50", 224)]["label"] == "ResNet-50"
    assert got[("pvt_v2_b0", 224)]["label"] == "pvt_v2_b0"  # a variant outside the figure keeps its name
    # the counter's Table 2 count (tests/tools/test_flops.py, backed by torch's FLOP counter there), rows round to 4
    assert got[("pvt_v2_b2_li", 224)]["gflops"] == round((3_775_751_104 + 142_600_192) / 1e9, 4)
    assert got[("resnet50", 448)]["gflops"] / got[("resnet50", 224)]["gflops"] == pytest.approx(4.0, abs=0.01)
    text = reports.render_complexity(rows).splitlines()
    assert text[0].split() == ["GFLOPs", "at", "side", "224", "448", "growth"]
    assert text[1].startswith("ResNet-50") and text[1].endswith("x4.0")


def test_complexity_arguments_checked_before_counting():
    with pytest.raises(ValueError, match="did you mean resnet50"):
        reports.complexity_rows(["resnet5"], [224])
    with pytest.raises(ValueError, match="at least 32"):
        reports.complexity_rows(["resnet50"], [16])


def test_write_figure4_is_atomic_and_complete(tmp_path):
    out = tmp_path / "fig"
    rows, csv_path, png_path = reports.write_figure4(out, ["vit_small_patch16", "pvt_v2_b0"], [224, 448])
    assert sorted(os.listdir(out)) == ["figure4.csv", "figure4.png"]  # no temporary file left behind
    written = list(csv.DictReader(open(csv_path, newline="")))
    assert [r["model"] for r in written] == [r["model"] for r in rows] and len(written) == 4
    assert float(written[1]["gflops"]) / float(written[0]["gflops"]) > 4.5  # ViT: quadratic attention
    png = png_path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        reports.write_figure4(tmp_path / "file")


# ------------------------------------------------------------------------------ import boundary
def test_plain_import_and_the_cli_parser_leave_the_tools_unloaded():
    # `import pvt` stays light, and `pvt --help` builds the parser without the commands' libraries
    code = (
        "import sys, pvt\n"
        "print(*[m for m in ('pvt.bench', 'pvt.tools.reports', 'pvt.dense', 'pvt.data', 'pvt.tasks', 'pvt.engine') "
        "if m in sys.modules])\n"
        "from pvt.cli import build_parser\n"
        "build_parser()\n"
        "print(*[m for m in ('pvt.bench', 'pvt.tools.reports') if m in sys.modules])\n"
    )
    src = str(Path(pvt.__file__).parents[1])  # this checkout's package, not an installed one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.splitlines() == ["", ""]
