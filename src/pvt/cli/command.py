"""How a sub-command is declared: its name, its function, a one-line summary and a paragraph."""

from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["command", "precision_flags"]


def command(sub, name: str, func: Callable[[argparse.Namespace], int], summary: str, details: str | None = None,
            *, show_defaults: bool = False) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` to the subparsers ``sub``, run by ``func(args)``; ``summary`` is its line
    in ``pvt --help``, ``details`` the paragraph of ``pvt NAME --help`` (default: the summary), and
    ``show_defaults`` prints every option's default there."""
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
