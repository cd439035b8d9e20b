"""The one "unknown name, did you mean ...?" error every registry and option check raises."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["close_matches", "unknown_name"]


# letters typed for the digits they look like (``pvt_v2_bo`` for ``pvt_v2_b0``), compared as those digits
_LOOKALIKES = str.maketrans({"o": "0", "l": "1", "i": "1", "s": "5", "z": "2"})


def _plain(text: str) -> str:
    return text.casefold().replace("-", "_").translate(_LOOKALIKES)


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name``, best first: those equal to it but for
    case, ``-``/``_`` and letters typed for look-alike digits (``o`` for ``0``), then the most similar."""
    choices = [str(c) for c in choices]
    by_plain: dict[str, list[str]] = {}
    for c in choices:
        by_plain.setdefault(_plain(c), []).append(c)
    plain = _plain(str(name))
    out = list(by_plain.get(plain, []))
    for p in difflib.get_close_matches(plain, list(by_plain), n=n + len(out), cutoff=0.5):
        out += [c for c in by_plain[p] if c not in out]
    return out[:n]


def unknown_name(what: str, name: str, choices: Iterable[str], accepted: str = "") -> ValueError:
    """``ValueError: unknown <what> '<name>'; did you mean a, b?; <accepted>`` (the hint only when a
    choice is close; ``accepted`` says what is accepted, e.g. ``"accepted: x, y"``)."""
    close = close_matches(name, choices)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {what} {name!r}{hint}" + (f"; {accepted}" if accepted else ""))
