"""Progress inside an epoch where no progress bar is drawn (output to a log file, a pipe, a CI console):
one line every :data:`EVERY_S` seconds, so a long epoch does not look like a hung one."""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["EVERY_S", "ProgressLines"]

EVERY_S = 30.0
"""Seconds between two progress lines."""


class ProgressLines:
    """``update(steps, images, loss)`` after each step says ``<prefix>  step 40/200  35 img/s  loss 1.234``
    through ``say`` once :data:`EVERY_S` seconds have passed since the last line (or the start); nothing
    when not ``enabled`` (a progress bar shows the same)."""

    def __init__(self, say: Callable[[str], None], prefix: str, total: int | None, *, enabled: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.say, self.prefix, self.total, self.enabled, self.clock = say, prefix, total, enabled, clock
        self.start = self.last = clock()

    def update(self, steps: int, images: int, loss: float) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last < EVERY_S:
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        self.say(f"{self.prefix}  step {steps}{of}  {images / max(now - self.start, 1e-9):.0f} img/s  loss {loss:.4f}")
