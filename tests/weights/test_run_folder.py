"""The run folder's one class (:class:`pvt.weights.run_folder.RunFolder`): its file names, an epoch written
in commit order and read back, a half-written epoch read back as the last committed one, and links refused.
A tiny stand-in model: no training, each test takes milliseconds."""

from __future__ import annotations

import json

import pytest
import torch

from pvt.weights.checkpoint import read_metadata, save_model
from pvt.weights.run_folder import RunFolder, resolve_checkpoint


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


def _writers(folder: RunFolder, epoch: int, written: list[str]):
    def write_state(path):
        written.append(path.name)
        torch.save({"epoch": epoch}, path)

    def write_weights(path):
        written.append(path.name)
        save_model(_Net(), path, variant="pvt_v2_b0", extra={"epoch": epoch, "train_config": {"lr": 0.5}})

    return write_state, write_weights


def _commit(folder: RunFolder, records: list[dict], is_best: bool) -> list[str]:
    written: list[str] = []
    folder.commit_epoch(records, *_writers(folder, records[-1]["epoch"], written), is_best=is_best)
    return written


def test_the_names_of_a_run_folder(tmp_path):
    f = RunFolder(tmp_path / "run")
    assert [p.name for p in (f.config, f.classes, f.metrics, f.state, f.last, f.best, f.curves, f.log)] == [
        "config.yaml", "classes.json", "metrics.jsonl", "state.pt", "last.safetensors", "best.safetensors",
        "learning_curves.png", "train.log"]
    assert RunFolder.LOCK == ".pvt-train.lock" and f.config.parent == tmp_path / "run"
    assert not f.is_run() and not f.taken()
    f.path.mkdir()
    (f.path / ".config.yaml.abc.tmp").write_bytes(b"half")  # a writer killed before config.yaml: still free
    assert not f.taken()
    f.write_config("lr: 0.5\n")
    assert f.is_run() and f.taken()


def test_an_epoch_is_committed_in_order_and_read_back(tmp_path):
    f = RunFolder(tmp_path / "run")
    f.write_config("model: pvt_v2_b0\nlr: 0.5\n")
    f.write_classes(["a", "b"])
    r1, r2 = {"epoch": 1, "val_top1": 50.0}, {"epoch": 2, "val_top1": 40.0}
    assert _commit(f, [r1], is_best=True) == ["state.pt", "last.safetensors", "best.safetensors"]
    assert _commit(f, [r1, r2], is_best=False) == ["state.pt", "last.safetensors"]
    assert f.metrics.read_text().splitlines() == [json.dumps(r1), json.dumps(r2)]
    assert f.read_config() == {"model": "pvt_v2_b0", "lr": 0.5}
    assert json.loads(f.classes.read_text()) == ["a", "b"]
    assert f.epoch() == 2 and f.epoch_of(f.best) == 1 and f.recorded_config() == {"lr": 0.5}
    assert f.read_records() == [r1, r2]
    assert f.weights() == f.best == resolve_checkpoint(f.path)
    f.best.unlink()
    assert resolve_checkpoint(f.path) == f.last and resolve_checkpoint(f.last) == f.last


def test_a_half_written_epoch_reads_back_as_the_last_committed_one(tmp_path):
    """A kill after metrics.jsonl gained epoch 3's line, before the commit: readers see epoch 2; a resume
    after 2 epochs drops the line; a damaged line is an error (or left out for a reader that asks)."""
    f = RunFolder(tmp_path / "run")
    records = [{"epoch": e, "val_top1": float(e)} for e in (1, 2, 3)]
    _commit(f, records[:2], is_best=True)
    f.write_metrics(records)  # the first write of epoch 3's commit, and no more
    assert f.epoch() == 2 and read_metadata(f.last)["epoch"] == 2
    assert [r["epoch"] for r in f.read_records()] == [1, 2]
    assert [r["epoch"] for r in f.read_records(upto=3)] == [1, 2, 3]
    assert f.metrics.read_text().count("\n") == 3  # reading writes nothing
    assert [r["epoch"] for r in f.committed_records(2)] == [1, 2]
    assert f.metrics.read_text().count("\n") == 2  # the resume dropped the uncommitted line
    with pytest.raises(ValueError, match="records epochs \\[1, 2\\], but the run committed epochs 1 to 3"):
        f.committed_records(3)
    f.metrics.write_text(json.dumps(records[0]) + '\n{"epoch": "2"}\n')
    with pytest.raises(ValueError, match='metrics.jsonl line 2 is damaged \\(its epoch is "2"'):
        f.read_records()
    assert f.read_records(skip_damaged=True) == [records[0]]


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "best.safetensors", "last.safetensors"])
def test_a_linked_file_is_refused(tmp_path, name):
    """A link planted in the folder (to a copy of the file itself, so that the run would read as intact) is
    not followed: reading it is a one-line error, and a linked weights file records no epoch or config."""
    f = RunFolder(tmp_path / "run")
    f.write_config("lr: 0.5\n")
    _commit(f, [{"epoch": 1, "val_top1": 1.0}], is_best=True)
    outside = tmp_path / f"outside-{name}"
    (f.path / name).rename(outside)
    (f.path / name).symlink_to(outside)
    if name == "last.safetensors":
        assert f.epoch() == 0 and f.recorded_config() is None and f.epoch_of(outside) == 1
        return
    read = {"config.yaml": f.read_config, "metrics.jsonl": f.read_records, "best.safetensors": f.weights}[name]
    with pytest.raises(ValueError, match=f"{name} is a symbolic link"):
        read()


def test_an_oversized_metrics_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.metrics.write_text('{"epoch": 1, "val_top1": 50.0}\n')
    assert [r["epoch"] for r in folder.read_records()] == [1]
    with folder.metrics.open("r+b") as f:
        f.truncate(RunFolder.METRICS_BYTES + 1)  # sparse: nothing allocated here, nor by the check
    monkeypatch.setattr(type(folder.metrics), "read_text", lambda *a, **k: pytest.fail("read before the size check"))
    with pytest.raises(ValueError, match=f"metrics.jsonl is {RunFolder.METRICS_BYTES + 1} bytes, more than"):
        folder.read_records()
