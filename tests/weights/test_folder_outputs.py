"""Weights folders written as a whole (issue 18, items 2 and 3): ``pvt convert --to hf|timm --force`` and
``pvt push --out`` write beside the folder and swap it in, so an interruption or a full disk at any write
point leaves the previous folder byte for byte; ``--out`` / ``--force`` never replace a folder that is,
contains or lies inside the source, nor one holding files pvt did not write. Faults are injected at each
write point (:func:`pvt.base.io._commit`) and at the swap, not at random times."""

from __future__ import annotations

import errno

import pytest
import yaml

import pvt.base.io
from pvt.cli import main as cli_main

WRITES = {"hf": 3, "timm": 2}  # files each folder format commits


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def sources(tmp_path, trained_checkpoint):
    """Two small classifiers with different weights (the second replaces the first's folder)."""
    return (trained_checkpoint(tmp_path / "a.safetensors", tmp_path),
            trained_checkpoint(tmp_path / "b.safetensors", tmp_path))


def _fail_at(monkeypatch, k: int, fault: str) -> None:
    """Make the ``k``-th file commit (k = 0: the swap of the folder) fail as ``fault`` says."""
    real, count = pvt.base.io._commit, [0]

    def boom():
        if fault == "interrupt":
            raise KeyboardInterrupt  # what SIGINT / SIGTERM raise under pvt's handlers
        raise OSError(errno.ENOSPC, "No space left on device")

    def commit(tmp, path):
        count[0] += 1
        if count[0] == k:
            boom()
        return real(tmp, path)

    monkeypatch.setattr(pvt.base.io, "_commit", commit)
    if k == 0:
        monkeypatch.setattr(pvt.base.io, "_exchange", lambda a, b: boom())


@pytest.mark.parametrize("fault", ["interrupt", "full"])
@pytest.mark.parametrize("fmt", ["hf", "timm"])
def test_an_interrupted_forced_convert_leaves_the_previous_folder_intact(sources, tmp_path, monkeypatch, capsys,
                                                                         fmt, fault):
    if fmt == "timm":  # timm names only its registered variants: our tiny one is none of them
        pytest.importorskip("timm")
        monkeypatch.setattr("pvt.weights.writing.timm_architecture", lambda model: "pvt_v2_b0")
    a, b = sources
    dst = tmp_path / "out"
    assert cli_main(["convert", str(a), str(dst), "--to", fmt]) == 0
    before = _snapshot(dst)
    assert len(before) == WRITES[fmt]
    for k in [*range(1, WRITES[fmt] + 1), 0]:  # every write point, then the swap (k = 0)
        with monkeypatch.context() as m:
            _fail_at(m, k, fault)
            status = cli_main(["convert", str(b), str(dst), "--to", fmt, "--force"])
        assert status == (130 if fault == "interrupt" else 2), (k, capsys.readouterr())
        err = capsys.readouterr().err
        if fault == "full" and k:
            assert "out of space" in err and "its previous version is intact" in err
        assert _snapshot(dst) == before, k  # not one new file in the old folder
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "out"], k
    assert cli_main(["convert", str(b), str(dst), "--to", fmt, "--force"]) == 0
    after = _snapshot(dst)
    assert after.keys() == before.keys() and after["model.safetensors"] != before["model.safetensors"]


def test_the_swap_without_an_atomic_exchange_renames_twice(sources, tmp_path, monkeypatch):
    a, b = sources
    dst = tmp_path / "out"
    assert cli_main(["convert", str(a), str(dst), "--to", "hf"]) == 0
    before = _snapshot(dst)
    monkeypatch.setattr(pvt.base.io, "_exchange", lambda a, b: False)
    assert cli_main(["convert", str(b), str(dst), "--to", "hf", "--force"]) == 0
    assert _snapshot(dst)["model.safetensors"] != before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "out"]


def test_a_folder_holding_other_files_is_never_replaced(sources, tmp_path, capsys):
    a, _ = sources
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    (dst / "config.json").write_text("{}")
    assert cli_main(["convert", str(a), str(dst), "--to", "hf", "--force"]) == 2
    assert "holds files pvt did not write (notes.txt)" in capsys.readouterr().err
    assert _snapshot(dst) == {"config.json": b"{}", "notes.txt": b"keep me"}


@pytest.fixture
def runs(tmp_path, trained_checkpoint):
    """Two sibling run folders, as pvt train leaves them (the weights, config.yaml, metrics.jsonl)."""
    for name in ("run", "sibling"):
        folder = tmp_path / "runs" / name
        trained_checkpoint(folder / "best.safetensors", tmp_path)
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": "pvt_v2_b0"}))
        (folder / "metrics.jsonl").write_text('{"epoch": 1, "val_top1": 50.0}\n')
    return tmp_path / "runs"


@pytest.mark.parametrize("where, says", [("run", "is"), (".", "contains"), ("run/pub", "lies inside")])
def test_push_out_never_replaces_the_run_or_its_parent(runs, capsys, where, says):
    run = runs / "run"
    before = {p: _snapshot(runs / p) for p in ("run", "sibling")}
    out = (runs / where) if where != "." else runs
    assert cli_main(["push", str(run), "--repo-id", "me/x", "--dry-run", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out} {says} the source {run}" in err[0], err
    assert {p: _snapshot(runs / p) for p in ("run", "sibling")} == before


def test_push_force_replaces_its_own_folder_as_a_whole(runs, tmp_path, monkeypatch, capsys):
    run, out = runs / "run", tmp_path / "repo"
    argv = ["push", str(run), "--repo-id", "me/x", "--dry-run", "--out", str(out)]
    assert cli_main(argv) == 0
    before = _snapshot(out)
    assert sorted(before) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    for k in [1, 2, 3, 4, 0]:  # its 4 files, then the swap
        with monkeypatch.context() as m:
            _fail_at(m, k, "interrupt")
            assert cli_main([*argv, "--force"]) == 130
        assert _snapshot(out) == before, k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "runs"]
    capsys.readouterr()
