"""One bound per user-given size, stated in the help text (issue 18, item 8): the batch, image side, thread,
worker and built-in data counts of every command, and every float option, are checked by the option's type
(``pvt.cli.options.bounded``) or the training config, so ``pvt benchmark -b 100000`` or ``pvt make-data --size
100000`` is a one-line usage error instead of a traceback or hours of work."""

from __future__ import annotations

import argparse

import pytest

from pvt.cli import main
from pvt.cli.options import bounded, bounded_type, describe_range

CASES = {
    "benchmark-batch": (["benchmark", "-b", "100000"], "argument --batch-size/-b: '100000': expected an integer 1..8192"),
    "benchmark-batch-zero": (["benchmark", "-b", "0"], "'0': expected an integer 1..8192"),
    "benchmark-size": (["benchmark", "--img-size", "100000"], "input size '100000' is not N or HxW with integers "
                                                               "1..4096"),
    "benchmark-threads": (["benchmark", "--threads", "100000"], "argument --threads: '100000': expected an integer "
                                                                "1..1024"),
    "benchmark-repeats": (["benchmark", "--repeats", "1e9"], "argument --repeats: '1e9': expected an integer"),
    "make-data-size": (["make-data", "--size", "100000"], "argument --size: '100000': expected an integer 32..4096"),
    "make-data-count": (["make-data", "--num-train", "1000000000000"], "argument --num-train: '1000000000000': "
                                                                       "expected an integer 1..100000"),
    "make-data-objects": (["make-data", "--max-objects", "100000"], "expected an integer 1..64"),
    "eval-batch": (["eval", "--checkpoint", "x", "--batch-size", "100000"], "argument --batch-size: '100000': "
                                                                           "expected an integer 1..8192"),
    "eval-workers": (["eval", "--checkpoint", "x", "--workers", "-1"], "argument --workers: '-1': expected an "
                                                                      "integer 0..128"),
    "predict-thresh": (["predict", "--checkpoint", "x", "a.png", "--score-thresh", "nan"],
                       "argument --score-thresh: 'nan': expected a finite number 0..1"),
    "predict-topk": (["predict", "--checkpoint", "x", "a.png", "--topk", "0"], "argument --topk: '0': expected an "
                                                                              "integer 1..1000"),
    "convert-classes": (["convert", "a", "b", "--num-classes", "-1"], "argument --num-classes: '-1': expected an "
                                                                      "integer 0..1000000"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unbounded_size_is_a_usage_error(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[case]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage error
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"pvt {argv[0]}: error: ") and expected in err[-1], err
    assert not any(tmp_path.iterdir())  # nothing was made


def test_make_shapes_dataset_bounds_its_own_arguments(tmp_path):
    from pvt.data.synthetic import make_shapes_dataset

    with pytest.raises(ValueError, match=r"num_train 1000000000000: expected an integer 1..100000"):
        make_shapes_dataset(tmp_path / "s", num_train=10**12)
    with pytest.raises(ValueError, match=r"size 100000: expected an integer 32..4096 \(pixels\)"):
        make_shapes_dataset(tmp_path / "s", size=100_000)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command,option,bound", [
    ("benchmark", "--batch-size", "integer 1..8192"), ("benchmark", "--threads", "integer 1..1024"),
    ("make-data", "--size", "integer 32..4096"), ("make-data", "--num-train", "integer 1..100000"),
    ("eval", "--batch-size", "integer 1..8192"), ("eval", "--workers", "integer 0..128"),
    ("predict", "--score-thresh", "finite number 0..1"),
])
def test_each_bound_is_stated_in_the_help(command, option, bound, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    after = text.split(f" {option} ", 1)[1]
    assert f"({bound})" in after[:400], after[:400]


def test_the_type_helpers():
    as_int, as_float = bounded_type(int, 1, 8), bounded_type(float, 0.0, 1.0)
    assert as_int("8") == 8 and as_float("0.25") == 0.25
    for kind, text in ((as_int, "9"), (as_int, "0"), (as_int, "1.5"), (as_float, "inf"), (as_float, "nan"),
                       (as_float, "-0.1"), (as_float, "x")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"'{text}': expected"):
            kind(text)
    assert describe_range(int, 0, None) == "an integer >= 0"
    assert bounded(float, 0.0, 1.0, "drop below this")["help"] == "drop below this (finite number 0..1)"
