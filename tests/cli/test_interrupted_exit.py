"""A ``pvt`` process that was interrupted (issue 18, item 11): once it is on its way out, a second Ctrl-C or
SIGTERM is ignored, so that it cannot break the interpreter's exit (an ``atexit`` traceback); called as a
function (``main(argv)``), the caller's handlers are left alone."""

from __future__ import annotations

import signal
import sys

import pytest

import pvt.cli.convert
from pvt.cli import main


@pytest.fixture
def interrupted_convert(monkeypatch):
    def run(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pvt.cli.convert, "run", run)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield before
    for s, h in before.items():
        signal.signal(s, h)


def test_the_pvt_process_ignores_further_signals_once_interrupted(interrupted_convert, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pvt", "convert", "a.pth", "b.safetensors"])
    assert main() == 130
    assert capsys.readouterr().err == "pvt convert: interrupted\n"
    assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_main_called_as_a_function_keeps_the_callers_handlers(interrupted_convert, capsys):
    assert main(["convert", "a.pth", "b.safetensors"]) == 130
    assert {s: signal.getsignal(s) for s in interrupted_convert} == interrupted_convert
