"""How a sub-command is declared: its name, its function, a one-line summary and a paragraph."""

from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["command"]


def command(sub, name: str, func: Callable[[argparse.Namespace], int], summary: str, details: str | None = None,
            *, show_defaults: bool = False) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` to the subparsers ``sub``, run by ``func(args)``; ``summary`` is its line
    in ``pvt --help``, ``details`` the paragraph of ``pvt NAME --help`` (default: the summary), and
    ``show_defaults`` prints every option's default there."""
    kwargs = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter} if show_defaults else {}
    p = sub.add_parser(name, help=summary, description=details or summary, **kwargs)
    p.set_defaults(func=func)
    return p
