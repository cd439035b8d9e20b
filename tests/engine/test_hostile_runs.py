"""Hostile and broken run folders (issue 18, items 4, 5, 11 and 12): files edited by hand, damaged lines,
symbolic links planted in the folder, a second process on the same folder, a second Ctrl-C while a run
stops. Each is one line on stderr (exit 2) or a clean stop; nothing outside the run folder is touched and
nothing in it is deleted. One short run (1 epoch) is trained once and copied for each test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from tiny_run import ARGS, TINY, TINY_VARIANT

import pvt
from pvt.cli import main
from pvt.engine.signals import Interrupted
from pvt.engine.trainer import Trainer
from pvt.models.variants import VARIANTS
from pvt.weights.run_folder import RunFolder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stripes):
    VARIANTS[TINY] = TINY_VARIANT  # (for the module: the copies are resumed by every test)
    out = tmp_path_factory.mktemp("hostile")
    run = pvt.train(data=str(stripes), output=str(out), name="run", **dict(ARGS, epochs=1)).run_dir
    yield run
    VARIANTS.pop(TINY, None)


@pytest.fixture
def run(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("key, edited", [("lr", "0.5"), ("smoothing", "0.3")])
def test_a_config_yaml_edited_by_hand_is_refused_with_the_line_that_differs(run, capsys, key, edited):
    path = run / "config.yaml"
    text = path.read_text()
    lines = [f"{key}: {edited}" if line.startswith(f"{key}:") else line for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = _one_error(capsys)
    assert f"its config.yaml says '{key}: {edited}'" in err and "changed by hand" in err
    assert (run / "metrics.jsonl").read_text().count("\n") == 1  # nothing trained, nothing rewritten


@pytest.mark.parametrize("line, what", [
    ("[1, 2]", "not a JSON object"),
    ('{"epoch": "1", "lr": 0.1}', 'its epoch is "1"'),
    ('{"epoch": null, "lr": 0.1}', "its epoch is null"),
    ('{"epoch": 1, "lr": 0.0', "not valid JSON"),  # truncated
    ("\x00\x01garbage", "not valid JSON"),
])
def test_a_damaged_metrics_line_is_one_error_and_nothing_is_deleted(run, capsys, line, what):
    path = run / "metrics.jsonl"
    path.write_text(line + "\n")
    before = path.read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = _one_error(capsys)
    assert f"metrics.jsonl line 1 is damaged ({what}" in err
    assert path.read_bytes() == before


def test_a_missing_committed_epoch_line_is_refused(run, capsys):
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "records epochs [], but the run committed epochs 1 to 1" in _one_error(capsys)


def test_a_second_process_is_kept_out_by_the_lock(run, capsys):
    with RunFolder(run).lock():  # another process training in the folder (a second open file description)
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        err = _one_error(capsys)
        assert f"run folder {str(run)!r} is in use by another pvt train (process {os.getpid()})" in err
    assert not (run / RunFolder.LOCK).exists()  # released and removed
    with pytest.raises(ValueError, match="in use"), RunFolder(run).lock(), RunFolder(run).lock():
        pass


def test_a_train_log_link_out_of_the_folder_is_refused(run, tmp_path, capsys):
    outside = tmp_path / "outside.sh"
    outside.write_text("echo hi\n")
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(outside)
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{run / 'train.log'} is a symbolic link (to {outside})" in _one_error(capsys)
    assert outside.read_text() == "echo hi\n"


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "last.safetensors", "state.pt"])
def test_no_run_file_is_written_through_a_link(run, tmp_path, name):
    """Every write of a resume (config.yaml, metrics.jsonl, the weights, state.pt: pvt.base.io's atomic writers)
    refuses a link (to a copy of the file itself, so that the run reads as intact)."""
    outside = tmp_path / f"outside-{name}"
    shutil.copy(run / name, outside)
    before = outside.read_bytes()
    (run / name).unlink()
    (run / name).symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link"):
        pvt.train(resume=run, quiet=True, epochs=2)
    assert outside.read_bytes() == before and (run / name).is_symlink()


def test_resume_of_a_file_names_its_run_folder(run, capsys):
    assert main(["train", "--resume", str(run / "last.safetensors")]) == 2
    err = _one_error(capsys)
    assert "--resume expects a run folder of pvt train" in err and f"pvt train --resume {run}" in err


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "bell\x07"])
def test_a_run_name_with_a_control_character_is_refused(stripes, tmp_path, capsys, name):
    assert main(["train", "--data", str(stripes), "--output", str(tmp_path), "--name", name]) == 2
    assert "expected printable characters" in _one_error(capsys)
    assert not any(tmp_path.iterdir())


def test_the_log_is_utf8_under_an_ascii_locale(tmp_path):
    code = ("import logging, sys; from pvt.weights.run_folder import LogFile; h = LogFile(sys.argv[1]); "
            "lg = logging.getLogger('t'); lg.addHandler(h); lg.error('run caf\\u00e9 \\u540d'); h.close()")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "train.log")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "Logging error" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "train.log").read_text(encoding="utf-8") == "run caf\u00e9 \u540d\n"


def test_a_second_ctrl_c_while_the_first_epoch_stops_leaves_no_half_removed_folder(stripes, tmp_path, tiny,
                                                                                  monkeypatch, capsys):
    """The first Ctrl-C (at the 2nd step) removes the run folder; a second one arrives during that removal.
    It is swallowed: the folder is gone whole, so the same command starts again."""
    real_step, real_rmtree = Trainer._step, shutil.rmtree
    count = [0]

    def step(self, run, batch, epoch):
        count[0] += 1
        if count[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, run, batch, epoch)

    def rmtree(path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, in the middle of the clean-up
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(Trainer, "_step", step)
    monkeypatch.setattr("pvt.engine.trainer.shutil.rmtree", rmtree)
    with pytest.raises(Interrupted) as e:
        pvt.train(data=str(stripes), output=str(tmp_path), name="early", **tiny)
    assert e.value.reported and "the run folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no half-removed folder, no aside copy


def test_predict_json_out_refuses_a_link(run, stripes, tmp_path, capsys):
    target = tmp_path / "elsewhere.json"
    target.write_text("[]")
    link = tmp_path / "p.json"
    link.symlink_to(target)
    image = next((stripes / "val").rglob("*.png"))
    argv = ["predict", "--checkpoint", str(run / "last.safetensors"), str(image), "--json-out", str(link)]
    assert main(argv) == 2
    assert f"{link} is a symbolic link (to {target})" in _one_error(capsys)
    assert link.is_symlink() and target.read_text() == "[]"
