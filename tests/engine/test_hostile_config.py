"""Hostile configs (issue 18, items 6 and 8): a YAML anchor bomb, deep nesting, a self-referencing alias or an
oversized file given to ``pvt train --config`` (or found as a run's config.yaml) is refused on one line before
anything walks it; a non-finite or out-of-range number in any config value is refused by name. Each case runs
the real command line and checks that no run folder was made."""

from __future__ import annotations

import pytest

from pvt.base.io import YAML_LIMITS, safe_yaml
from pvt.cli import main
from pvt.engine.config import load_yaml, parse_value


def _bomb(levels: int = 9) -> str:
    """An anchor bomb of about 550 bytes: 9 ** (levels + 1) scalars once its aliases are expanded."""
    lines = ["task_options:", "  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


YAMLS = {
    "bomb": (_bomb(), "once its aliases (*name) are expanded"),
    "deep": ("task_options:\n  x: " + "[" * 5000 + "]" * 5000 + "\n", "YAML nested more than 32 levels deep"),
    "self": ("task_options: &a\n  x: *a\n", "YAML alias *a refers to a collection that contains it"),
    "huge": ("lr: 0.001\n" + "#" * (YAML_LIMITS["bytes"] + 1) + "\n", "more than the 1048576 a config may have"),
    "binary": (b"lr: \xff\xfe\n", "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(YAMLS))
def test_a_hostile_yaml_config_is_one_line_and_makes_no_run(case, tmp_path, capsys):
    text, expected = YAMLS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["train", "--config", str(path), "--output", str(tmp_path / "runs"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pvt train: error: config file"), err
    assert expected in err[0], err
    assert not (tmp_path / "runs").exists()  # the bomb used to hang in dataclasses.asdict, before any check


def test_the_bomb_is_small_and_the_limits_let_real_configs_through(tmp_path):
    assert len(_bomb()) < 600
    ok = tmp_path / "ok.yaml"
    # anchors and aliases that expand modestly are fine: one recipe reused
    ok.write_text("scale: &s [0.08, 1.0]\ntask_options: {a: *s, b: *s}\nlr: 1e-3\n")
    assert load_yaml(ok) == {"scale": [0.08, 1.0], "task_options": {"a": [0.08, 1.0], "b": [0.08, 1.0]},
                             "lr": "1e-3"}
    # the node count includes the expansion: 8 levels of 9 (43 million) is refused, 3 levels (6561 scalars) is not
    assert len(safe_yaml(_bomb(3), "x")["task_options"]["a3"]) == 9
    with pytest.raises(ValueError, match="more than 100000 values"):
        safe_yaml(_bomb(5), "x")


def test_a_command_line_value_goes_through_the_same_bounds():
    assert parse_value("[1, [2, 3]]") == [1, [2, 3]]
    with pytest.raises(ValueError, match="command-line value: YAML nested more than 32 levels deep"):
        parse_value("[" * 100 + "]" * 100)


NUMBERS = {  # item 8: each was a traceback or a run with nonsense numbers
    "warmup-inf": (["--warmup-epochs", ".inf"], "config value warmup_epochs=inf: expected a finite number"),
    "lr-overflow": (["--lr", "1e999"], "config value lr=inf: expected a finite number"),
    "lr-huge": (["--lr", "1e300"], "config value lr=1e+300: expected a number <= 10"),
    "mixup-inf": (["--mixup", ".inf"], "config value mixup=inf: expected a finite number"),
    "smoothing-nan": (["--smoothing", ".nan"], "config value smoothing=nan: expected a finite number"),
    "crop-nan": (["--crop-pct", ".nan"], "config value crop_pct=nan: expected a finite number"),
    "scale-nan": (["--scale", ".nan,1"], "config value scale=[nan, 1]: expected a list of finite numbers"),
    "batch": (["--batch-size", "100000"], "config value batch_size=100000: expected an integer <= 8192"),
    "workers": (["--workers", "100000"], "config value workers=100000: expected an integer <= 128"),
    "threads": (["--threads", "100000"], "config value threads=100000: expected an integer <= 1024"),
    "img": (["--img-size", "8192"], "config value img_size=8192: expected an integer <= 4096"),
    "num-train": (["--task", "detection", "--opt", "num_train=1e12"],
                  "detection task: option num_train=1000000000000.0: expected an integer 1..100000"),
    "shapes-size": (["--task", "segmentation", "--opt", "shapes_size=tiny"],
                    "segmentation task: option shapes_size='tiny': expected an integer 32..4096"),
}


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_a_non_finite_or_unbounded_number_is_refused_by_name(case, tmp_path, capsys):
    flags, expected = NUMBERS[case]
    code = main(["train", *flags, "--output", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_the_train_help_states_each_bound(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for bound in ("(default: 128; an integer 1..8192)", "(default: 224; an integer 16..4096)",
                  "(default: 2; an integer 0..128)", "(default: 0; an integer 0..1024)",
                  "(a finite number 0..10)", "(default: 0.1; a finite number 0..1)"):
        assert bound in text, bound


def test_push_skips_a_hostile_config_yaml_instead_of_hanging(tmp_path, make_stripes, trained_checkpoint):
    from pvt.tools.publish import run_summary
    from pvt.weights import read_checkpoint
    from pvt.weights.run_folder import RunFolder

    run = tmp_path / "run"
    run.mkdir()
    ckpt = trained_checkpoint(run / "best.safetensors", make_stripes(tmp_path / "data", n_train=1, n_val=1))
    (run / "config.yaml").write_text(_bomb())
    with pytest.raises(ValueError, match="YAML of more than 100000 values"):
        RunFolder(run).read_config()
    read = read_checkpoint(ckpt)
    read.extra.pop("train_config")  # as a file that records none: the run's config.yaml is read instead
    assert run_summary(run, read, ckpt).train_config is None
    (run / "config.yaml").write_text("lr: 0.001\n")
    assert run_summary(run, read, ckpt).train_config == {"lr": 0.001}
