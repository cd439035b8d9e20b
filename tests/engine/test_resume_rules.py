"""What a resume may change and what it reads (issue 14, findings 4 and 8): a changed recipe value is refused
(config.yaml never records a value the run did not use), a longer ``epochs`` is recorded with the epoch it
changed at; an unreadable state.pt is one error that names the way on, and ``--fresh-optimizer`` takes it."""

from __future__ import annotations

import os
import pickle
import random

import pytest
import torch

import pvt
from pvt.cli import main


@pytest.fixture
def two_epochs(stripes, tmp_path, tiny):
    return pvt.train(data=str(stripes), output=str(tmp_path), name="run", **dict(tiny, epochs=2)).run_dir


def test_a_changed_recipe_value_is_refused_and_config_yaml_stays_true(two_epochs, capsys):
    before = (two_epochs / "config.yaml").read_text()
    assert main(["train", "--resume", str(two_epochs), "--lr", "0.5", "--smoothing", "0.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"cannot resume {str(two_epochs)!r} with lr=0.5 (the run uses 0.005), smoothing=0.2 (the run uses 0.1)" \
        in err[0]
    assert "only epochs, workers, threads, device, data_dir may change" in err[0]
    assert (two_epochs / "config.yaml").read_text() == before
    assert main(["train", "--resume", str(two_epochs), "--epochs", "1"]) == 2
    assert "epochs may only be extended" in capsys.readouterr().err
    assert main(["train", "--resume", str(two_epochs), "--name", "other"]) == 2
    assert "name='other' (the run uses 'run')" in capsys.readouterr().err


def test_the_same_values_and_the_harmless_ones_are_accepted_and_recorded(two_epochs):
    result = pvt.train(resume=two_epochs, quiet=True, lr=0.005, epochs=3, workers=0, threads=1)
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
    text = (two_epochs / "config.yaml").read_text()
    assert text.startswith("# resumed after epoch 2: epochs changed from 2 to 3\n") and "epochs: 3" in text
    assert "threads changed" not in text  # 1 before and after
    pvt.train(resume=two_epochs, quiet=True, epochs=4)
    lines = (two_epochs / "config.yaml").read_text().splitlines()
    assert lines[:2] == ["# resumed after epoch 2: epochs changed from 2 to 3",
                         "# resumed after epoch 3: epochs changed from 3 to 4"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "malicious", "not-a-state", "missing"])
def test_an_unreadable_state_is_one_error_and_fresh_optimizer_continues(two_epochs, tmp_path, capsys, damage):
    state = two_epochs / "state.pt"
    marker = tmp_path / "executed"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "random":
        state.write_bytes(b"\x00" + random.Random(0).randbytes(5000))
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "malicious":
        with open(state, "wb") as f:
            pickle.dump({"model": _Evil(marker)}, f, protocol=2)
    elif damage == "not-a-state":
        torch.save({"weights": torch.zeros(2)}, state)
    else:
        state.unlink()
    (two_epochs / ".last.safetensors.abc.tmp").write_bytes(b"x" * 100)  # a killed writer's leftover
    assert main(["train", "--resume", str(two_epochs), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pvt train: error: cannot resume {str(two_epochs)!r}: ")
    assert {"truncated": "is not a readable training state (corrupt or truncated?)",
            "random": "is not a training state: neither a zip archive nor a pickle",
            "empty": "is empty (0 bytes)",
            "malicious": "was refused as unsafe: it holds Python objects besides tensors (posix.system)",
            "not-a-state": "is not a training state written by pvt train (it records no epoch)",
            "missing": "state.pt is missing"}[damage] in err[0]
    assert (f"Its weights after epoch 2 are intact in last.safetensors: continue from them with a fresh optimiser "
            f"state with `pvt train --resume {two_epochs} --fresh-optimizer`") in err[0]
    assert not marker.exists() and not list(two_epochs.glob("*.tmp")) and not list(two_epochs.glob(".*.tmp"))

    result = pvt.train(resume=two_epochs, quiet=True, epochs=3, fresh_optimizer=True)
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
    assert torch.load(state, weights_only=True)["epoch"] == 3  # a whole state again
    assert "from last.safetensors with a fresh optimiser state" in (two_epochs / "config.yaml").read_text()
    assert not marker.exists()


def test_fresh_optimizer_is_refused_where_the_state_is_intact(two_epochs, capsys):
    assert main(["train", "--resume", str(two_epochs), "--fresh-optimizer"]) == 2
    assert "--fresh-optimizer is for a run whose state.pt is unreadable" in capsys.readouterr().err
    assert main(["train", "--fresh-optimizer"]) == 2
    assert "--fresh-optimizer only applies with --resume" in capsys.readouterr().err
