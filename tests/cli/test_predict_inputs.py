"""``pvt predict`` on what users hand it (issue 18, item 12): a folder of images, unreadable files among
good ones (skipped with a message and counted, never stopping the rest), many images (read in bounded
batches, with progress)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pvt.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_stripes, trained_checkpoint):
    root = tmp_path_factory.mktemp("predict")
    data = make_stripes(root / "data", n_train=1, n_val=3, size=32)
    return data, trained_checkpoint(root / "model.safetensors", data)


def test_a_folder_stands_for_the_images_under_it(env, capsys):
    data, ckpt = env
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "val"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["image"] for p in preds] == [str(p) for p in sorted((data / "val").rglob("*.png"))]
    assert len(preds) == 9 and all(len(p["top"]) == 3 for p in preds)


def test_unreadable_files_are_skipped_with_a_message_and_counted(env, tmp_path, capsys, caplog):
    data, ckpt = env
    good = sorted((data / "val" / "vertical").glob("*.png"))[:2]
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[0].read_bytes()[:100])
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400M pixels, ~60 KB
    args = [str(good[0]), str(cut), str(tmp_path / "bomb.png"), str(good[1])]
    assert main(["predict", "--checkpoint", str(ckpt), *args, "--json"]) == 0
    out = capsys.readouterr()
    assert [p["image"] for p in json.loads(out.out)] == [args[0], args[3]]
    assert "cut.png' cannot be read" in caplog.text and "bomb.png' cannot be read: Image size" in caplog.text
    assert "skipped 2 unreadable image(s) of 4" in caplog.text
    # only unreadable files: one line, exit 2
    assert main(["predict", "--checkpoint", str(ckpt), str(cut), str(tmp_path / "bomb.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.png' cannot be read" in err[0] and "other 1 images cannot be read" in err[0]


def test_images_are_read_in_bounded_batches_with_progress(env, monkeypatch):
    import pvt
    from pvt.tasks.classification import ClassificationTask

    data, ckpt = env
    sizes, calls = [], []
    top = ClassificationTask._top
    monkeypatch.setattr(ClassificationTask, "eval_batch_size", 4)
    monkeypatch.setattr(ClassificationTask, "_top", lambda self, logits, k: sizes.append(len(logits)) or
                        top(self, logits, k))
    preds = pvt.predict(ckpt, data / "val", progress=lambda done, total: calls.append((done, total)))
    assert len(preds) == 9 and sizes == [4, 4, 1]
    assert calls == [(i, 9) for i in range(1, 10)]


@pytest.mark.parametrize("what, message", [("empty", "holds no images"),
                                           ("missing", "does not exist (expected an image file or a folder")])
def test_an_empty_or_missing_folder_is_one_line(env, tmp_path, capsys, what, message):
    _, ckpt = env
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / what)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
