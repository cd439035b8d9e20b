"""Ctrl-C and SIGTERM during training: both stop the run the same way, never in the middle of saving.

Schedulers, ``kill``, containers and torchrun send SIGTERM on preemption; a terminal sends SIGINT on
Ctrl-C. While :func:`stop_signals` is active, either raises :class:`Interrupted` (a KeyboardInterrupt)
in the main thread, except inside :meth:`StopSignals.hold`, where it is deferred until the block ends,
so that the files an epoch writes are all written or none.

Once a stop has been raised, the run is stopping: a second Ctrl-C (or SIGTERM) is swallowed, so that it
cannot cut the clean-up short (a half-removed run folder, a log handler closed twice); :meth:`StopSignals.shield`
does the same for the clean-up after an error.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Interrupted", "StopSignals", "stop_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum`` (SIGINT or SIGTERM); ``reported`` once the trainer has told the
    user what the run folder keeps."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.reported = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """The handlers :func:`stop_signals` installs (see the module docstring)."""

    def __init__(self) -> None:
        self._held = 0
        self._pending: int | None = None
        self._stopping = False

    def _handle(self, signum: int, frame) -> None:
        if self._stopping:
            return  # already stopping: see the module docstring
        if self._held:
            self._pending = signum
            return
        self._stopping = True
        raise Interrupted(signum)

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        """For the clean-up of a run that is stopping (after an error or a first signal): SIGINT / SIGTERM
        in the block are swallowed, as are any deferred by :meth:`hold`."""
        stopping, self._stopping = self._stopping, True
        try:
            yield
        finally:
            self._stopping, self._pending = stopping, None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Defer SIGINT / SIGTERM until the block ends (then raise :class:`Interrupted`); an exception from
        the block wins over a deferred signal."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if not self._held and self._pending is not None:
            signum, self._pending = self._pending, None
            self._stopping = True
            raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Install the handlers for the block (main thread only; elsewhere signals keep their handlers and
    :meth:`StopSignals.hold` defers nothing), then restore the previous ones."""
    handlers = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield handlers
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, handlers._handle)
    try:
        yield handlers
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
