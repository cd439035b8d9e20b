"""The ``pvt`` command. Each sub-command lives in its own module with a ``register(subparsers)``.

Building the parser imports nothing heavy (no torch, torchvision or timm: the sub-command modules import
those inside the functions that run a command), so ``pvt ... --help`` answers at once."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from . import app, bench, convert, data, models, push, train
from .command import Parser

__all__ = ["main", "build_parser"]

_MODULES = (models, convert, push, train, data, bench, app)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pvt", description="Pyramid Vision Transformer (PVT v1/v2): models, weights, FLOPs, training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # an ASCII locale: a non-ASCII name is escaped, not a traceback
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the sub-command's own parser, with the closest options it has
        sub = _subparser(parser, getattr(args, "command", None))
        (sub or parser).unknown(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if argv is None:  # the command itself (not a call from Python, whose process settings are the caller's)
        _use_available_cores(args)
    try:
        from ..accel.runtime import configure_allocator
        from ..engine.signals import stop_signals

        configure_allocator(getattr(args, "allocator", None))
        # SIGTERM stops every command as Ctrl-C does (an exception, not a sudden death), so that writers
        # remove their temporary files (pvt export, convert, push); training installs its own handlers
        with stop_signals():
            return int(args.func(args) or 0)
    except (ValueError, OSError, FloatingPointError) as e:
        # bad input, a file that cannot be read or written (disk full included), a diverged training
        print(f"pvt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (pvt.engine.signals)
        if argv is None:  # the process is ours and stopping: another Ctrl-C must not break its exit (atexit)
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
        if not getattr(e, "reported", False):
            print(f"pvt {args.command}: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))


def _use_available_cores(args: argparse.Namespace) -> None:
    """Threads from the cores this process may use, idle OpenMP threads asleep (:mod:`pvt.base.cores`), set
    before torch loads; where the user chose (``--threads``, ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``) that
    stays as it is."""
    import os

    from ..base.cores import use_available_cores

    if not getattr(args, "threads", None) and not os.environ.get("OMP_NUM_THREADS", "").strip():
        use_available_cores()


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
