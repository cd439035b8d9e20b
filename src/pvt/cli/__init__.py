"""The ``pvt`` command. Each sub-command lives in its own module with a ``register(subparsers)``.

Building the parser imports nothing heavy (no torch, torchvision or timm: the sub-command modules import
those inside the functions that run a command), so ``pvt ... --help`` answers at once."""

from __future__ import annotations

import argparse
import sys

from . import bench, convert, data, models, push, train
from .command import Parser

__all__ = ["main", "build_parser"]

_MODULES = (models, convert, push, train, data, bench)


class UsageError(ValueError):
    """Bad arguments or input named by the user: reported on one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pvt", description="Pyramid Vision Transformer (PVT v1/v2): models, weights, FLOPs, training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the sub-command's own parser, with the closest options it has
        sub = _subparser(parser, getattr(args, "command", None))
        (sub or parser).unknown(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from ..accel.runtime import configure_allocator

        configure_allocator(getattr(args, "allocator", None))
        return int(args.func(args) or 0)
    except (ValueError, OSError, FloatingPointError) as e:
        # bad input, a file that cannot be read or written (disk full included), a diverged training
        print(f"pvt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during training (pvt.engine.signals)
        if not getattr(e, "reported", False):
            print(f"pvt {args.command}: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> Parser | None:
    """The parser of sub-command ``name`` (None when there is none)."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _one_line(e: BaseException) -> str:
    """An error's message on one line (an OSError without its ``[Errno N]`` prefix when it names a file)."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
