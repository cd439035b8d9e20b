"""Hostile and broken shard folders (issue 18, items 1, 7, 11): a crafted ``index.json`` is refused with a
one-line error before anything is opened, shards are opened as local files (never as URLs, never through a
shell), bad per-sample labels are skipped and counted (never scored as another class), and an interrupted
``make-shards`` leaves no partial or stale files."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile

import pytest

from pvt.cli import main
from pvt.data import ShardDataset, collate_skipping, read_index, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_stripes):
    """A shard folder of 9 train / 6 val stripe images (shards of 4, folder order)."""
    src = make_stripes(tmp_path_factory.mktemp("stripes"), n_train=3, n_val=2, size=16)
    out = tmp_path_factory.mktemp("shards") / "s"
    write_shards(src, out, shard_size=4, shuffle=False)
    return out


@pytest.fixture
def copy(shards, tmp_path):
    """A fresh copy of the shard folder and a function to rewrite its index."""
    folder = tmp_path / "copy"
    shutil.copytree(shards, folder)

    def edit(change):
        index = json.loads((folder / "index.json").read_text())
        change(index)
        (folder / "index.json").write_text(json.dumps(index))
        return folder

    return folder, edit


@pytest.fixture(scope="module")
def checkpoint(shards, trained_checkpoint, tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", shards)


def _set_val_file(name):
    return lambda index: index["splits"]["val"]["shards"][0].update(file=name)


def test_a_pipe_absolute_or_dotdot_shard_name_is_refused_and_runs_nothing(copy, checkpoint, tmp_path, capsys):
    folder, edit = copy
    marker = tmp_path / "marker"
    for name in (f"pipe:touch {marker}; cat val-000000.tar", str(folder / "val-000000.tar"), "/etc/passwd",
                 "../copy/val-000000.tar", "sub/val-000000.tar", "http://example.invalid/x.tar", ".hidden.tar"):
        edit(_set_val_file(name))
        with pytest.raises(ValueError, match=r"splits\['val'\]\['shards'\]\[0\] is .*plain file name"):
            read_index(folder)
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pvt eval: error:" in err and "plain file name" in err, err
        assert not marker.exists()
    edit(_set_val_file(f"pipe:touch {marker}; cat val-000000.tar"))
    assert main(["train", "--data", str(folder), "--epochs", "1", "--model", "pvt_v2_b0", "--img-size", "32",
                 "--output", str(tmp_path / "runs")]) == 2
    assert not marker.exists() and "plain file name" in capsys.readouterr().err


def test_shards_are_read_as_local_files_without_any_url_opener_or_process(shards, monkeypatch):
    import webdataset.tariterators

    def refuse(*args, **kwargs):
        raise AssertionError(f"opened as a URL or a process: {args}")

    monkeypatch.setattr(webdataset.tariterators.gopen, "gopen", refuse)  # the module its url_opener calls
    monkeypatch.setattr(subprocess, "Popen", refuse)
    ds = ShardDataset(shards, "train", raw=True)
    got = list(ds)
    assert len(got) == 9 and sorted(label for _, label in got) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_a_shard_linked_out_of_the_folder_is_refused(copy, tmp_path):
    folder, _ = copy
    outside = tmp_path / "elsewhere.tar"
    shutil.move(folder / "val-000000.tar", outside)
    (folder / "val-000000.tar").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the shard folder"):
        ShardDataset(folder, "val")


def _tar(path, samples):
    """A shard of ``(key, {ext: bytes})`` samples."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("cls", [b"99", b"-1", b"3", None, b"x", b""])
def test_a_bad_label_is_skipped_and_counted_never_scored_as_another_class(copy, cls, caplog):
    folder, _ = copy
    with tarfile.open(folder / "val-000000.tar") as tar:  # keys 0..3, labels 0, 0, 1, 1 (folder order)
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    samples = []
    for k in range(4):
        key = f"{k:08d}"
        s = {"png": members[f"{key}.png"], "cls": members[f"{key}.cls"]}
        if k == 1:  # the second image's label is crafted
            s.pop("cls") if cls is None else s.update(cls=cls)
        samples.append((key, s))
    _tar(folder / "val-000000.tar", samples)
    items = list(ShardDataset(folder, "val", raw=True))
    assert [None if x is None else x[1] for x in items] == [0, None, 1, 1, 2, 2]
    _, labels, skipped = collate_skipping(items)
    assert skipped == 1 and labels.tolist() == [0, 1, 1, 2, 2]
    assert "skipped sample 00000001" in caplog.text and "expected an integer 0..2" in caplog.text


def test_a_truncated_shard_is_a_one_line_error(copy):
    folder, _ = copy
    (folder / "val-000000.tar").write_bytes((folder / "val-000000.tar").read_bytes()[:700])
    with pytest.raises(ValueError, match="val-000000.tar"):
        list(ShardDataset(folder, "val", raw=True))


_BROKEN_INDEXES = {
    "no splits": (lambda i: i.pop("splits"), "'splits' is None"),
    "splits a list": (lambda i: i.update(splits=[]), "'splits' is \\[\\]"),
    "no class_counts": (lambda i: i["splits"]["val"].pop("class_counts"), "\\['class_counts'\\] is None"),
    "classes a number": (lambda i: i.update(classes=5), "'classes' is 5"),
    "classes repeated": (lambda i: i.update(classes=["a", "a", "b"]), "distinct class names"),
    "class_counts too short": (lambda i: i["splits"]["val"].update(class_counts=[2, 2]), "3 integers"),
    "class_counts off": (lambda i: i["splits"]["val"].update(class_counts=[2, 2, 3]), "adding up to the shards' 6"),
    "count a string": (lambda i: i["splits"]["val"]["shards"][0].update(count="4"), "\\['count'\\] is '4'"),
    "count negative": (lambda i: i["splits"]["val"]["shards"][0].update(count=-1), "integer >= 0"),
    "count true": (lambda i: i["splits"]["val"]["shards"][0].update(count=True), "integer >= 0"),
    "file a number": (lambda i: i["splits"]["val"]["shards"][0].update(file=7), "plain file name"),
    "shard a string": (lambda i: i["splits"]["val"]["shards"].__setitem__(0, "val-000000.tar"), "plain file name"),
    "shard listed twice": (lambda i: i["splits"]["val"]["shards"].append(i["splits"]["val"]["shards"][0]),
                           "listed once"),
    "no version": (lambda i: i.pop("version"), "'version' is None"),
    "unreadable a string": (lambda i: i["splits"]["val"].update(unreadable="x"), "list of file names"),
}


@pytest.mark.parametrize("case", list(_BROKEN_INDEXES))
def test_a_broken_index_is_a_one_line_error_naming_the_field(copy, case):
    folder, edit = copy
    change, message = _BROKEN_INDEXES[case]
    edit(change)
    with pytest.raises(ValueError, match=message):
        ShardDataset(folder, "val")


def test_a_broken_index_is_refused_by_eval_before_scoring(copy, checkpoint, capsys):
    folder, edit = copy
    edit(lambda i: i.update(classes=5))
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'classes' is 5; expected a non-empty list of class names" in err


def test_an_interrupted_make_shards_leaves_no_files_and_a_rerun_is_consistent(make_stripes, tmp_path, monkeypatch,
                                                                             capsys):
    from pathlib import Path

    src = make_stripes(tmp_path / "src", n_train=3, n_val=2, size=16)
    out = tmp_path / "out"
    read_bytes, calls = Path.read_bytes, []

    def interrupted(self):  # Ctrl-C while the second shard is being written
        calls.append(self)
        if len(calls) == 6:
            assert any(p.name.endswith(".tmp") for p in out.iterdir())
            raise KeyboardInterrupt
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", interrupted)
    assert main(["make-shards", str(src), str(out), "--shard-size", "2"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()  # it made the folder, so nothing at all stays
    monkeypatch.setattr(Path, "read_bytes", read_bytes)

    out.mkdir()  # an existing folder keeps what it held before, and only that
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(Path, "read_bytes", interrupted)
    calls.clear()
    assert main(["make-shards", str(src), str(out), "--shard-size", "2"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    monkeypatch.setattr(Path, "read_bytes", read_bytes)

    # a killed run (no cleanup) leaves temporaries and shards without an index: temporaries are removed,
    # shards without an index refused, so no index ever sits beside shards it does not list
    (out / ".train-000000.tar.tmp").write_bytes(b"partial")
    (out / "train-000005.tar").write_bytes(b"old")
    assert main(["make-shards", str(src), str(out), "--shard-size", "4"]) == 2
    assert "1 shard file(s) without an index.json (e.g. 'train-000005.tar'" in capsys.readouterr().err
    assert not (out / ".train-000000.tar.tmp").exists()
    (out / "train-000005.tar").unlink()
    assert main(["make-shards", str(src), str(out), "--shard-size", "4"]) == 0
    index = read_index(out)
    listed = {s["file"] for info in index["splits"].values() for s in info["shards"]}
    assert {p.name for p in out.iterdir()} == listed | {"index.json", "notes.txt"}
    assert len(listed) == 3 + 2  # 9 train images in shards of 4, 6 val images


def test_sigterm_during_make_shards_removes_what_it_wrote(make_stripes, tmp_path, monkeypatch, capsys):
    import os
    import signal
    from pathlib import Path

    src = make_stripes(tmp_path / "src", n_train=3, n_val=2, size=16)
    out = tmp_path / "out"
    read_bytes, calls = Path.read_bytes, []

    def terminated(self):  # SIGTERM (a scheduler, kill) while the second shard is being written
        calls.append(self)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return read_bytes(self)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Path, "read_bytes", terminated)
    assert main(["make-shards", str(src), str(out), "--shard-size", "2"]) == 128 + signal.SIGTERM
    assert not out.exists() and len(calls) == 4
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_split_name_cannot_leave_the_output_folder(make_stripes, tmp_path):
    src = make_stripes(tmp_path / "src", n_train=1, n_val=1, size=16)
    with pytest.raises(ValueError, match="plain folder name"):
        write_shards(src, tmp_path / "out", splits=("train", "../val"))
