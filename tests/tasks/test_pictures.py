"""Pictures where people look: classification predict --out-dir (image + top-k bars), predict --attention,
the eval confusion matrix and worst-images grid, the learning curves with lr and images/s."""

import json

import numpy as np
import pytest
from PIL import Image

import pvt
from pvt.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory, make_stripes, trained_checkpoint):
    root = tmp_path_factory.mktemp("pictures")
    data = make_stripes(root / "data", n_train=2, n_val=3)
    return data, trained_checkpoint(root / "m.safetensors", data)


def test_predict_out_dir_draws_topk(model, tmp_path, capsys):
    data, ckpt = model
    imgs = [str(data / "val" / "vertical" / "0.png"), str(data / "val" / "diagonal" / "0.png")]
    assert main(["predict", "--checkpoint", str(ckpt), *imgs, "--json", "--topk", "2",
                 "--out-dir", str(tmp_path / "out")]) == 0
    recs = json.loads(capsys.readouterr().out)
    # two images named 0.png: their folder names tell the drawings apart
    assert [r["output"] for r in recs] == [str(tmp_path / "out" / "vertical_0_pred.png"),
                                          str(tmp_path / "out" / "diagonal_0_pred.png")]
    pic = Image.open(recs[0]["output"])
    assert pic.size == (320, 320 + 2 * 16 + 6)  # the 32 px image scaled to 320 wide, two bars below
    # the first bar's length is its probability of the 320 px width
    row = np.asarray(pic.convert("RGB"))[320 + 4 + 8]
    blue = np.flatnonzero((row == (90, 140, 230)).all(1))
    assert blue.max() == pytest.approx(319 * recs[0]["top"][0]["prob"], abs=1.5)


def test_predict_without_out_dir_writes_nothing(model, tmp_path, monkeypatch, capsys):
    data, ckpt = model
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "val" / "vertical" / "0.png"), "--json"]) == 0
    assert "output" not in json.loads(capsys.readouterr().out)[0]
    assert list(tmp_path.iterdir()) == []


def test_predict_attention_png(model, tmp_path, capsys):
    data, ckpt = model
    img = str(data / "val" / "vertical" / "1.png")
    assert main(["predict", "--checkpoint", str(ckpt), img, "--json", "--attention", "--attention-query", "0.5,0.25",
                 "--out-dir", str(tmp_path)]) == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["attention"] == str(tmp_path / "1_attention.png")
    pic = Image.open(rec["attention"])
    # input, 4 stages, rollout: six 192 px tiles (the 32 px input is square) and a 16 px title row
    assert pic.size == (6 * (192 + 4), 192 + 16)
    assert len(np.unique(np.asarray(pic.convert("L")))) > 20  # pictures, not a blank


def test_predict_attention_query_checked(model, capsys):
    data, ckpt = model
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "val" / "vertical" / "1.png"), "--attention",
                 "--attention-query", "2,0.5"]) == 2
    assert "attention query '2,0.5': Y and X must be in [0, 1]" in capsys.readouterr().err


def test_eval_writes_confusion_and_worst(model, tmp_path):
    data, ckpt = model
    r = pvt.evaluate(ckpt, data, out_dir=tmp_path)
    assert r["images"] == 9
    assert set(r["pictures"]) == {"confusion", "worst"}
    assert r["pictures"]["confusion"] == str(tmp_path / "eval_val_confusion.png")
    conf = Image.open(r["pictures"]["confusion"])
    assert conf.size[0] >= 300 and conf.size[1] >= 300
    worst = Image.open(r["pictures"]["worst"])
    assert worst.size == (4 * 128, 3 * (128 + 14))  # 9 images kept (fewer than 16), 4 per row
    from pvt.tasks import load_trained
    from pvt.tasks.classification import EvalLooks

    # the counts behind the picture: every evaluated image once, the diagonal = top-1
    trained = load_trained(ckpt, data=str(data))
    from torch.utils.data import DataLoader

    task = trained.task
    task.evaluate(trained.model, DataLoader(task.eval_dataset(), batch_size=4, collate_fn=task.collate_fn),
                  trained.device)
    looks: EvalLooks = task._looks
    assert int(looks.counts.sum()) == 9
    assert 100 * int(looks.counts.trace()) / 9 == pytest.approx(r["top1"])
    assert looks.counts.sum(1).tolist() == [3, 3, 3]  # three val images per class
    assert [w[0] for w in looks.worst] == sorted((w[0] for w in looks.worst), reverse=True)


def test_eval_default_folder_and_no_pictures(model, tmp_path, capsys):
    data, ckpt = model
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--no-pictures", "--json"]) == 0
    assert "pictures" not in json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data)]) == 0
    assert f"pictures: {ckpt.parent / 'eval_val_confusion.png'}" in capsys.readouterr().out


def test_learning_curves_show_lr_and_speed(tmp_path):
    from pvt.engine.curves import plot_curves

    records = [{"epoch": e, "train_loss": 2 - e / 10, "val_loss": 2.1 - e / 10, "val_top1": 10.0 * e,
                "lr": 1e-3 * (e + 1) / 5, "images_per_s": 100.0 + e} for e in range(5)]
    plot_curves(records, tmp_path / "c.png", "top1")
    pic = Image.open(tmp_path / "c.png")
    assert pic.size == (1000, 800)  # four panels: loss and metric, then lr and images/s below
    plot_curves([{k: v for k, v in r.items() if k not in ("lr", "images_per_s")} for r in records],
                tmp_path / "d.png", "top1")
    assert Image.open(tmp_path / "d.png").size == (1000, 400)  # old records: the two panels as before
