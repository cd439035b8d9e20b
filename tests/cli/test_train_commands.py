"""The ``pvt train / eval / predict`` commands on a small synthetic folder: outputs, JSON, bad input."""

from __future__ import annotations

import json

import pytest

from pvt.cli import main

FAST = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--threads", "1", "--quiet", "--aa", "none",
        "--model", "pvt_v2_b0", "--img-size", "32"]


@pytest.fixture(scope="module")
def trained(stripes_run):
    return stripes_run


def test_train_writes_a_run_and_prints_json_when_quiet(trained):
    data, run, printed = trained
    assert (run / "best.safetensors").is_file() and (run / "config.yaml").is_file()
    cfg = (run / "config.yaml").read_text()
    assert "batch_size: 8" in cfg and f"data: {data}" in cfg
    summary = json.loads(printed)  # --quiet prints one JSON line: the run folder and its best epoch
    best = max((json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()), key=lambda r: r["val_top1"])
    assert summary["run_dir"] == str(run) and summary["epoch"] == best["epoch"] == 1
    assert summary["val_top1"] == best["val_top1"]


def test_eval_json_and_text(trained, capsys):
    data, run, _ = trained
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "--data", str(data), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 12 and r["img_size"] == 32 and r["model"] == "pvt_v2_b0"
    assert 0 <= r["top1"] <= r["top5"] == 100.0  # 3 classes: top-5 always hits
    best = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert r["top1"] == pytest.approx(best["val_top1"])
    assert main(["eval", "--checkpoint", str(run), "--data", str(data / "val")]) == 0  # run folder, split folder
    assert "top-1" in capsys.readouterr().out


def test_predict_json_and_table(trained, capsys):
    data, run, _ = trained
    imgs = [str(data / "val" / "vertical" / "0.png"), str(data / "val" / "horizontal" / "1.png")]
    assert main(["predict", "--checkpoint", str(run / "last.safetensors"), *imgs, "--topk", "2", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["image"] for p in preds] == imgs
    for p in preds:
        assert len(p["top"]) == 2 and {t["class"] for t in p["top"]} <= {"horizontal", "vertical", "diagonal"}
        assert p["top"][0]["prob"] >= p["top"][1]["prob"]
    assert main(["predict", "--checkpoint", str(run / "last.safetensors"), imgs[0]]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("0.png") and line.count("%") == 3


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--epochs", "abc"], "epochs='abc': expected an integer"),
        (["--lr", "-0.1"], "lr=-0.1: expected a number >= 0"),
        (["--amp", "fp8"], "amp='fp8': expected one of"),
        (["--model", "pvt_v9"], "unknown model 'pvt_v9'"),
        (["--batch-size", "500"], "batch_size=500: larger than the 36 training images"),
        (["--opt", "foo=1"], "classification takes no task options"),
    ],
)
def test_bad_config_values_exit_2_without_run_folder(trained, tmp_path, capsys, extra, msg):
    data, _, _ = trained
    out = tmp_path / "runs"
    code, err = _err(capsys, ["train", "--data", str(data), "--output", str(out), "--name", "x", *FAST, *extra])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("pvt train: error:")
    assert msg in err or __import__("re").search(msg, err), err
    assert not (out / "x").exists()


def test_bad_data_folders(tmp_path, capsys, make_stripes):
    out = tmp_path / "runs"
    base = ["train", "--output", str(out), "--name", "x", *FAST]
    code, err = _err(capsys, [*base, "--data", str(tmp_path / "nope")])
    assert code == 2 and "data folder" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, err = _err(capsys, [*base, "--data", str(tmp_path / "empty")])
    assert code == 2 and "has no train/ or val/" in err
    data = make_stripes(tmp_path / "d", n_train=2, n_val=1)
    (data / "train" / "blank").mkdir()
    code, err = _err(capsys, [*base, "--data", str(data)])
    assert code == 2 and "class folder" in err and "blank' has no images" in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_checkpoints_and_images(trained, tmp_path, capsys):
    data, run, _ = trained
    code, err = _err(capsys, ["predict", "--checkpoint", str(run / "best.safetensors"), str(tmp_path / "no.png")])
    assert code == 2 and "image" in err and "no.png' does not exist" in err
    code, err = _err(capsys, ["eval", "--checkpoint", str(run / "best.safetensors"), "--model", "pvt_v2_b1"])
    assert code == 2 and "holds 'pvt_v2_b0', not the requested model 'pvt_v2_b1'" in err
    code, err = _err(capsys, ["eval", "--checkpoint", str(run / "state.pt")])
    assert code == 2 and "is not a model written by pvt train" in err
    # fine-tuning from a checkpoint of another variant
    out = tmp_path / "runs"
    code, err = _err(capsys, ["train", "--data", str(data), "--output", str(out), "--name", "ft", *FAST,
                              "--model", "pvt_v2_b1", "--pretrained", str(run / "best.safetensors")])
    assert code == 2 and "are for 'pvt_v2_b0', not for model 'pvt_v2_b1'" in err
    assert not (out / "ft").exists()
    # an existing run folder is never overwritten
    code, err = _err(capsys, ["train", "--data", str(data), "--output", str(run.parent), "--name", run.name, *FAST])
    assert code == 2 and "already exists" in err and "--resume" in err


@pytest.mark.filterwarnings("ignore:checkpoint .* head was dropped")
def test_finetune_from_own_checkpoint_with_new_head(trained, tmp_path, capsys):
    data, run, _ = trained
    two = tmp_path / "two"
    for split in ("train", "val"):
        for c in ("horizontal", "vertical"):
            (two / split / c).mkdir(parents=True)
            for p in sorted((data / split / c).iterdir())[:4]:
                (two / split / c / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "runs"
    assert main(["train", "--data", str(two), "--output", str(out), "--name", "ft", *FAST,
                 "--pretrained", str(run / "best.safetensors"), "--batch-size", "4"]) == 0
    from pvt.tasks import load_trained

    ft = load_trained(out / "ft")
    assert ft.task.class_names == ["horizontal", "vertical"] and ft.model.head.out_features == 2


def test_bf16_channels_last_and_ema_on_cpu(trained, tmp_path):
    import torch

    data, _, _ = trained
    out = tmp_path / "runs"
    assert main(["train", "--data", str(data), "--output", str(out), "--name", "e", *FAST,
                 "--amp", "bf16", "--channels-last", "--model-ema", "--model-ema-decay", "0.5"]) == 0
    rec = json.loads((out / "e" / "metrics.jsonl").read_text())
    assert {"val_top1", "val_ema_top1", "val_ema_loss"} <= set(rec)
    st = torch.load(out / "e" / "state.pt", weights_only=True)
    ema, model = st["ema"], st["model"]
    assert ema.keys() == model.keys() and any(not torch.equal(ema[k], model[k]) for k in ema)


def test_corrupt_images_are_skipped_and_counted_in_the_epoch_line(tmp_path, capsys, make_stripes):
    data = make_stripes(tmp_path / "d", n_train=4, n_val=2)
    (data / "train" / "vertical" / "garbage.png").write_bytes(b"\x00 not a png")
    cut = data / "train" / "horizontal" / "0.png"
    cut.write_bytes(cut.read_bytes()[:60])  # header intact, pixels cut off: fails when decoded
    out = tmp_path / "runs"
    # every image read once in the epoch (repeated augmentation would read a third of them, 3 times)
    argv = ["train", "--data", str(data), "--output", str(out), "--name", "c", *FAST, "--batch-size", "2",
            "--no-repeated-aug"]
    argv.remove("--quiet")
    assert main(argv) == 0
    rec = json.loads((out / "c" / "metrics.jsonl").read_text())
    assert rec["skipped_images"] == 2  # one at scan time, one while loading
    assert "skipped 2 unreadable images" in capsys.readouterr().out
