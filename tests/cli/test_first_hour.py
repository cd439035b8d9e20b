"""A newcomer's first hour with the ``pvt`` command: help that answers at once (nothing heavy imported),
no silent option abbreviations, "did you mean" for a mistyped model or option, readable ``--help``, and
logs free of a warning that does not apply."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from pvt.cli import main

HEAVY = ("torch", "torchvision", "timm")

_IMPORTS_AFTER_HELP = """
import argparse, contextlib, io, sys
from pvt.cli import build_parser, main
commands = [None] + [c for c in next(a for a in build_parser()._actions
                                     if isinstance(a, argparse._SubParsersAction)).choices if c]
for c in commands:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--help"] if c is None else [c, "--help"])
        except SystemExit:
            pass
print(len(commands), sorted(m for m in {heavy} if m in sys.modules))
"""


def test_help_imports_no_torch():
    """``pvt --help`` and every sub-command's ``--help`` (``convert``'s, which lists the weight layouts,
    included) build their parsers without importing torch, torchvision or timm (each costs seconds)."""
    code = _IMPORTS_AFTER_HELP.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, imported = out.stdout.split(maxsplit=1)
    assert int(count) >= 13 and imported.strip() == "[]", out.stdout
    # and the same for the one sub-command a newcomer meets first, measured the way `python -X importtime` does
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pvt", "train", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage: pvt train" in out.stdout
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "pvt.cli.train" in loaded and not loaded & set(HEAVY)


@pytest.mark.parametrize("argv,usage,message", [
    (["train", "--epoch", "5"], "pvt train", "unrecognized arguments: --epoch 5; did you mean --epochs"),
    (["train", "--batchsize", "8"], "pvt train", "did you mean --batch-size"),
    (["eval", "--checkpoint", "x", "--bach-size", "2"], "pvt eval", "did you mean --batch-size"),
    (["models", "--jsn"], "pvt models", "unrecognized arguments: --jsn; did you mean --json"),
    (["models", "--patern=pvt*"], "pvt models", "did you mean --pattern"),
])
def test_unknown_or_abbreviated_option_is_an_error_with_a_suggestion(argv, usage, message, capsys):
    """No option is abbreviated (``--epoch 5`` is not taken as ``--epochs 5``); an unknown option is
    reported with the sub-command's own usage and its closest options."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} ") and message in err
    assert err.strip().splitlines()[-1].startswith(f"{usage}: error: ")


def test_mistyped_model_name_suggests_the_one_meant(capsys):
    from pvt.base.naming import close_matches
    from pvt.models.variants import get_variant

    with pytest.raises(ValueError, match=r"unknown model 'pvt_v2_bo'; did you mean pvt_v2_b0, "):
        get_variant("pvt_v2_bo")
    assert close_matches("pvt-v2-B2-Li", ["pvt_v2_b2", "pvt_v2_b2_li"])[0] == "pvt_v2_b2_li"
    assert close_matches("resnet50", ["pvt_v2_b0", "pvt_v2_b1"]) == []
    assert main(["info", "pvt_v2_bo"]) == 2
    assert "pvt info: error: unknown model 'pvt_v2_bo'; did you mean pvt_v2_b0," in capsys.readouterr().err


def test_train_help_shows_real_metavars_and_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert " V " not in text and not re.search(r" V\]", text)
    for shown in ("--epochs N", "--lr X", "--scale X,Y", "--model MODEL", "--interpolation {bicubic,bilinear,nearest}",
                  "--amp {auto,none,bf16,fp16}"):
        assert shown in text, shown
    # one option's help per entry: every entry says its default at most once
    entries = re.split(r"\n  (?=-)", text.split("training config", 1)[1])
    assert len(entries) > 40
    for entry in entries:
        assert len(re.findall(r"\bdefault\b", entry)) <= 1, entry
    assert "(default: 300; an integer" in text and "(default: 0.08,1.0)" in text


def test_short_run_schedule_logs_no_cosine_warning(caplog):
    """A run no longer than its warm-up leaves the cosine one step: timm warns that the cosine "will have no
    effect", which says nothing useful to the user; the schedule itself still warms up and ends."""
    import torch

    from pvt.engine.trainer import cosine_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with caplog.at_level(logging.WARNING):
        sched = cosine_schedule(opt, total=4, warmup=10.0, min_lr=0.01, warmup_lr=0.1)
    assert not [r for r in caplog.records if "no effect" in r.getMessage()]
    assert sched.warmup_t == 3 and sched.t_initial == 1
    sched.step_update(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert logging.getLogger("timm.scheduler.cosine_lr").level == logging.NOTSET  # left as it was


def test_progress_lines_every_interval_with_a_fake_clock(monkeypatch):
    """Without a progress bar (a log), a line every EVERY_S seconds: steps done of all, images/s since the
    epoch began, the running loss; nothing when a bar is shown."""
    from pvt.engine import progress

    times = iter([0.0, 10.0, 31.0, 40.0, 62.0])
    said: list[str] = []
    lines = progress.ProgressLines(said.append, "epoch 2/5", 200, clock=lambda: next(times))
    for steps, loss in ((1, 2.5), (2, 2.25), (3, 2.0), (4, 1.75)):
        lines.update(steps, 8 * steps, loss)
    assert said == ["epoch 2/5  step 2/200  1 img/s  loss 2.2500", "epoch 2/5  step 4/200  1 img/s  loss 1.7500"]
    quiet = progress.ProgressLines(said.append, "x", None, enabled=False, clock=iter([0.0]).__next__)
    quiet.update(1, 8, 1.0)
    assert len(said) == 2


def test_train_in_a_log_prints_progress_between_epoch_lines(tmp_path, capsys, monkeypatch, make_stripes):
    """``pvt train`` with its output going to a log (not a terminal: no tqdm bar) says where the epoch is."""
    from pvt.engine import progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line after every step
    data = make_stripes(tmp_path / "d", n_train=2, n_val=1)
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "runs"), "--name", "r", "--epochs", "1",
            "--batch-size", "2", "--workers", "0", "--threads", "1", "--aa", "none", "--model", "pvt_v2_b0",
            "--img-size", "32", "--no-repeated-aug"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    steps = [(int(s), int(t)) for s, t in re.findall(r"^epoch 1/1  step (\d+)/(\d+)  \d+ img/s  loss \d+\.\d{4}$",
                                                      out, re.M)]
    total = steps[-1][1]
    assert total >= 2 and steps == [(i, total) for i in range(1, total + 1)], out
    assert out.index(f"step {total}/{total}") < out.index("epoch 1/1  lr")  # before the epoch's own line
    assert f"step {total}/{total}" in (tmp_path / "runs" / "r" / "train.log").read_text()


def test_demo_says_where_it_cached_the_digits(tmp_path, capsys, monkeypatch):
    """The demo names the folder it wrote the built-in digits to (the training itself is stubbed here)."""
    import types

    import pvt.api

    seen = {}

    def train(**kw):
        seen.update(kw)
        ckpt = tmp_path / "run" / "best.safetensors"
        return types.SimpleNamespace(metrics=[{"images_per_s": 1.0}], best_checkpoint=ckpt, run_dir=ckpt.parent)

    monkeypatch.setattr(pvt.api, "train", train)
    monkeypatch.setattr(pvt.api, "evaluate", lambda *a, **k: {"images": 360, "top1": 1.0, "top5": 2.0, "loss": 3.0})
    monkeypatch.setattr(pvt.api, "predict", lambda paths, *a, **k: [{"top": [{"class": "0", "prob": 1.0}]}] * 5)
    assert main(["demo", "--data-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"digits: cached in {tmp_path / 'cache' / 'digits-32'} " in out
    assert out.count("cached in") == 1 and seen["data_dir"] == str(tmp_path / "cache")
    assert (tmp_path / "cache" / "digits-32" / "val" / "9").is_dir()
