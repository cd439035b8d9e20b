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
                                     if isinstance(a, argparse._SubParsersAction)).choices if c not in {skip}]
for c in commands:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--help"] if c is None else [c, "--help"])
        except SystemExit:
            pass
print(len(commands), sorted(m for m in {heavy} if m in sys.modules))
"""


def test_help_imports_no_torch():
    """``pvt --help`` and every sub-command's ``--help`` build their parsers without importing torch,
    torchvision or timm (each costs seconds). ``convert`` is left out: its help lists the weight layouts,
    whose names live beside the torch code that converts them."""
    code = _IMPORTS_AFTER_HELP.format(skip={"convert"}, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, imported = out.stdout.split(maxsplit=1)
    assert int(count) >= 12 and imported.strip() == "[]", out.stdout
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
