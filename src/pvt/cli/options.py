"""Bounded numeric options: every size and float a user types is checked by its option's type (an integer or
a finite number within a stated range), and the range is written into the option's --help text, so the
bound is declared once. A bad value is argparse's one-line ``pvt CMD: error: argument --x: ...``, exit 2."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["bounded", "bounded_type", "describe_range"]


def describe_range(kind: type, lo: float | None, hi: float | None) -> str:
    """``"an integer 1..8192"``, ``"a finite number 0..1"``, ``"an integer >= 0"``."""
    what = "an integer" if kind is int else "a finite number"
    g = lambda v: str(v) if isinstance(v, int) else f"{v:g}"  # noqa: E731
    if lo is not None and hi is not None:
        return f"{what} {g(lo)}..{g(hi)}"
    return what + (f" >= {g(lo)}" if lo is not None else f" <= {g(hi)}" if hi is not None else "")


def bounded_type(kind: type, lo: float | None, hi: float | None) -> Callable[[str], Any]:
    """An argparse ``type``: the text as ``kind`` (int or float) within ``lo``..``hi``, finite; an
    ArgumentTypeError saying what is accepted otherwise."""

    def convert(text: str) -> Any:
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            value = None
        if value is None or (kind is float and not math.isfinite(value)) \
                or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {describe_range(kind, lo, hi)}")
        return value

    convert.__name__ = "integer" if kind is int else "number"  # argparse names the type in some messages
    return convert


def bounded(kind: type, lo: float | None, hi: float | None, help: str = "") -> dict[str, Any]:
    """``add_argument`` keywords of a bounded option: its ``type`` and its ``help`` with the range appended,
    e.g. ``p.add_argument("--batch-size", default=64, **bounded(int, 1, MAX_BATCH, "images per step"))``."""
    rng = describe_range(kind, lo, hi).split(" ", 1)[1] if lo is not None and hi is not None \
        else describe_range(kind, lo, hi)
    return {"type": bounded_type(kind, lo, hi), "help": f"{help} ({rng})" if help else f"{rng}"}
