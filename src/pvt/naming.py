"""The one "unknown name, did you mean ...?" error every registry and option check raises."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["close_matches", "unknown_name"]


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name`` (best first)."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)


def unknown_name(what: str, name: str, choices: Iterable[str], accepted: str = "") -> ValueError:
    """``ValueError: unknown <what> '<name>'; did you mean a, b?; <accepted>`` (the hint only when a
    choice is close; ``accepted`` says what is accepted, e.g. ``"accepted: x, y"``)."""
    close = close_matches(name, choices)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {what} {name!r}{hint}" + (f"; {accepted}" if accepted else ""))
