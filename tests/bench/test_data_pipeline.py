"""The data-pipeline benchmark: synthetic ImageNet-like JPEGs, each loader stage timed in wall and CPU
seconds, the model's training step, and the workers they imply (``benchmarks/data_pipeline.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from pvt.bench.data import cores_needed, pipeline_stages, synthetic_jpegs, time_stage

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_pipeline.py"


def test_synthetic_jpegs_and_stage_timing(tmp_path):
    files = synthetic_jpegs(tmp_path, n=3, size=(100, 75))
    assert [Image.open(p).size for p in files] == [(100, 75)] * 3 and Image.open(files[0]).format == "JPEG"
    assert synthetic_jpegs(tmp_path, n=3, size=(100, 75)) == files  # kept, not rewritten
    stages = pipeline_stages(32)
    assert list(stages)[:2] == ["read file", "decode (PIL)"]
    train = [k for k in stages if k.startswith("decode + training")][0]
    assert tuple(stages[train](files[0]).shape) == (3, 32, 32)
    r = time_stage("decode (PIL)", stages["decode (PIL)"], files, rounds=2)
    assert r.images_per_s > 0 and r.images_per_cpu_s > 0 and len(r.rounds) == 2
    assert cores_needed(2404.0, 235.0) == 11 and cores_needed(100.0, 100.0) == 1


def test_the_script_reports_stages_models_and_workers(tmp_path):
    out = tmp_path / "figures.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--images", "3", "--size", "64x48", "--img-size", "32",
                        "--models", "pvt_v2_b0", "--batch", "2", "--steps", "1", "--rounds", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "loader workers per device" in p.stdout and "images/CPU-s" in p.stdout
    figures = json.loads(out.read_text())
    assert len(figures["stages"]) == 4 and list(figures["models"]) == ["pvt_v2_b0 training step (cpu, batch 2, 32px)"]
    assert all(v["images_per_cpu_s"] > 0 for v in figures["stages"].values())
