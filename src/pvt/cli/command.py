"""How a sub-command is declared: its name, its function, a one-line summary and a paragraph; and the
parser class every ``pvt`` parser is."""

from __future__ import annotations

import argparse
from typing import Callable, NoReturn

__all__ = ["Parser", "command", "precision_flags"]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` as ``pvt`` needs it: options are never abbreviated (``--epoch 5`` is an
    error, not ``--epochs 5``), an unknown option is named with the closest known ones, and the
    description may be a function, called only when the help is shown (so building the parser imports
    nothing heavy)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def description(self) -> str | None:
        d = self._description
        return d() if callable(d) else d

    @description.setter
    def description(self, value) -> None:
        self._description = value

    def unknown(self, extra: list[str]) -> NoReturn:
        """Exit with ``unrecognized arguments`` for ``extra``, naming the closest options this parser
        has for its first unknown option."""
        from ..base.naming import close_matches

        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        flag = next((e.split("=", 1)[0] for e in extra if e.startswith("-")), None)
        close = close_matches(flag, known) if flag else []
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def command(sub, name: str, func: Callable[[argparse.Namespace], int], summary: str,
            details: str | Callable[[], str] | None = None, *, show_defaults: bool = False) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` to the subparsers ``sub``, run by ``func(args)``; ``summary`` is its line
    in ``pvt --help``, ``details`` the paragraph of ``pvt NAME --help`` (default: the summary; a function
    is called when the help is shown), and ``show_defaults`` prints every option's default there."""
    kwargs = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter} if show_defaults else {}
    p = sub.add_parser(name, help=summary, description=details or summary, **kwargs)
    p.set_defaults(func=func)
    return p


def precision_flags(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--calibration``, as every inference command takes them."""
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "int8", "auto", "fp32", "bf16"],
                   help="inference precision: auto = bfloat16 where the CPU multiplies it natively (AVX-512 BF16, "
                        "AMX) or on a GPU, else float32; int8 = quantised linear layers on the CPU (default: float32)")
    p.add_argument("--calibration", metavar="DIR",
                   help="int8: a folder of images (searched recursively, up to 64) for static activation ranges "
                        "(default: dynamic ranges, measured on every batch)")
