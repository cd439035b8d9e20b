"""The run folder of ``pvt train``, in one class: its file names, the order an epoch is committed in, and
reading a run back. The trainer writes it, checkpoint resolution picks its weights, the API's
``TrainResult`` names its files and ``pvt push`` reads its config and metrics, all through :class:`RunFolder`.

It lives on the weights floor: reading a run back reads the epoch and the training config its weights
record (:func:`pvt.weights.checkpoint.read_metadata`), which ``pvt.base`` could not, and every reader
(the engine, :mod:`pvt.tasks`, :mod:`pvt.api`, :mod:`pvt.tools.publish`) stands above it. Which config
values a resume may change is the engine's rule (:mod:`pvt.engine.resume`).

Layout::

    config.yaml         the resolved training config (feed it back with --config)
    classes.json        class names (when the task has them)
    metrics.jsonl       one JSON line per epoch: epoch, lr, train_loss, val_*, images_per_s, time
    state.pt            resumable state: model, optimiser, scheduler, scaler, EMA, RNG, epoch
    last.safetensors    weights after the latest epoch (own format: config, classes, input size, epoch inside)
    best.safetensors    weights of the epoch with the highest val_<task.best_metric>
    learning_curves.png
    train.log           appended as UTF-8
    .pvt-train.lock     while a process trains in the folder (a second one is refused)
    events.out.tfevents.*, mlruns/, wandb/   the experiment trackers' files (pvt.engine.tracking)

Every file is written atomically (:mod:`pvt.base.io`: temporary file + rename), so a kill at any moment
leaves the previous version intact; no write follows a symbolic link. ``config.yaml`` is written first
(a folder with one can always be resumed); an epoch is then committed in one order
(:meth:`RunFolder.commit_epoch`): ``metrics.jsonl``, ``state.pt`` (the commit), ``last.safetensors``,
``best.safetensors``. A kill between two of them leaves a metrics line ahead of the commit (dropped when
the run is read back) or weights one epoch behind it (each records its epoch; a resume rewrites them).

Every file is untrusted when read back: no file is read through a symbolic link, ``config.yaml`` is read
within :data:`pvt.base.io.YAML_LIMITS`, each ``metrics.jsonl`` line must be a JSON object with a whole
epoch >= 1, and the weights' metadata is checked (:func:`pvt.weights.checkpoint.read_header`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..base.io import TMP_SUFFIX, atomic_write, open_log, read_yaml, refuse_link
from .checkpoint import read_metadata

__all__ = ["RunFolder", "LogFile", "resolve_checkpoint"]


class RunFolder:
    """One run folder at ``path`` (which need not exist yet): the paths of its files, their writers in
    commit order, and their readers (see the module doc)."""

    CONFIG = "config.yaml"
    CLASSES = "classes.json"
    METRICS = "metrics.jsonl"
    STATE = "state.pt"
    LAST = "last.safetensors"
    BEST = "best.safetensors"
    CURVES = "learning_curves.png"
    LOG = "train.log"
    LOCK = ".pvt-train.lock"
    """Held (``flock``) by the process training in the folder; removed when it ends."""
    METRICS_BYTES = 64 << 20
    """The largest ``metrics.jsonl`` read back (a line of about 300 bytes an epoch: 200 000 epochs)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ names
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def classes(self) -> Path:
        return self.path / self.CLASSES

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    def is_run(self) -> bool:
        """Whether the folder holds a run (its ``config.yaml``, the first file a run writes)."""
        return self.config.is_file()

    def taken(self) -> bool:
        """Whether the folder exists and holds more than a process killed before it wrote ``config.yaml``
        leaves (temporary files, the lock)."""
        if not self.path.exists():
            return False
        left = set(self.path.glob(f".*{TMP_SUFFIX}")) | {self.path / self.LOCK}
        return bool(set(self.path.iterdir()) - left)

    # ------------------------------------------------------------------ writing
    def write_config(self, text: str) -> None:
        with atomic_write(self.config, "w") as f:
            f.write(text)

    def write_classes(self, names: list[str]) -> None:
        with atomic_write(self.classes, "w") as f:
            json.dump(names, f, indent=1)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` whole: one line per record."""
        with atomic_write(self.metrics, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))

    def commit_epoch(self, records: list[dict[str, Any]], write_state: Callable[[Path], None],
                     write_weights: Callable[[Path], None], is_best: bool) -> None:
        """Commit the epoch of ``records[-1]``: ``metrics.jsonl`` (every record), then ``write_state(state.pt)``
        (the commit), then ``write_weights`` to ``last.safetensors`` and, when ``is_best``, to
        ``best.safetensors``. Each writer must write atomically and record the epoch in the weights; then
        a kill at any write leaves the last committed epoch readable (see the module doc)."""
        self.write_metrics(records)
        write_state(self.state)
        write_weights(self.last)
        if is_best:
            write_weights(self.best)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock (:attr:`LOCK`, ``flock``) for the block: a second process training in the
        folder (a second ``pvt train --resume``) gets a one-line ValueError naming it. Released (and the
        file removed) when the block ends, however it ends; the kernel releases it if the process dies."""
        path = self.path / self.LOCK
        refuse_link(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # a lock on a file the previous holder removed meanwhile would lock nothing
                if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                    raise BlockingIOError(errno.EWOULDBLOCK, "lock file replaced")
            except (BlockingIOError, FileNotFoundError):
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise ValueError(f"run folder {str(self.path)!r} is in use by another pvt train"
                                 + (f" (process {holder})" if holder.isdigit() else "")
                                 + ": wait for it to end, or stop it first") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            os.close(fd)

    def log_handler(self) -> LogFile:
        """A logging handler appending to ``train.log``."""
        return LogFile(self.log)

    # ------------------------------------------------------------------ reading back
    def read_config(self) -> dict[str, Any]:
        """``config.yaml`` as a mapping, read within :data:`pvt.base.io.YAML_LIMITS` (not through a link).
        FileNotFoundError when it is missing; a one-line ValueError when it is not a bounded YAML mapping."""
        refuse_link(self.config)
        return read_yaml(self.config, "run config")

    def recorded_config(self) -> dict[str, Any] | None:
        """The training config ``last.safetensors`` records (each committed epoch rewrites it): what the
        run's weights were trained with; None when there is none to read."""
        meta = self._metadata(self.last)
        recorded = meta.get("train_config") if meta else None
        return recorded if isinstance(recorded, dict) else None

    def epoch_of(self, path: Path) -> int | None:
        """The epoch a weights file written by the trainer ends (None: no such file, a link, or it records none)."""
        meta = self._metadata(path)
        epoch = meta.get("epoch") if meta else None
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None

    def epoch(self) -> int:
        """The last committed epoch as a reader sees it: the one ``last.safetensors`` records (0 when none).
        A kill between ``state.pt`` and ``last.safetensors`` leaves it one behind the state until a resume
        rewrites it; a reader then sees the epoch whose weights it can read."""
        return self.epoch_of(self.last) or 0

    def read_records(self, upto: int | None = None, *, skip_damaged: bool = False) -> list[dict[str, Any]]:
        """The ``metrics.jsonl`` lines of epochs <= ``upto`` (default: :meth:`epoch`; every line when the
        weights record none): a line past it belongs to an epoch that was never committed. A damaged line
        (not a JSON object with a whole epoch >= 1; pvt writes the file whole, so it was edited or damaged)
        is a one-line ValueError naming it, or left out with ``skip_damaged``. [] without the file."""
        upto = (self.epoch() or None) if upto is None else upto
        return [r for r in self._records(skip_damaged) if upto is None or r["epoch"] <= upto]

    def committed_records(self, upto: int) -> list[dict[str, Any]]:
        """For a resume after ``upto`` committed epochs: their ``metrics.jsonl`` lines, which must be exactly
        epochs 1..upto in order (a one-line ValueError otherwise, and nothing is deleted); later lines (an
        epoch that was not committed) are removed from the file."""
        try:
            every = self._records(skip_damaged=False)
        except ValueError as e:
            raise ValueError(f"cannot resume {str(self.path)!r}: {e}") from None
        keep = [r for r in every if r["epoch"] <= upto]
        if [r["epoch"] for r in keep] != list(range(1, upto + 1)):
            raise ValueError(f"cannot resume {str(self.path)!r}: {self.metrics} records epochs "
                             f"{[r['epoch'] for r in keep]}, but the run committed epochs 1 to {upto}: it was "
                             "edited or damaged (restore it)")
        if len(every) > len(keep):
            self.write_metrics(keep)
        return keep

    def _records(self, skip_damaged: bool) -> list[dict[str, Any]]:
        """Every line of ``metrics.jsonl``, checked (see :meth:`read_records`)."""
        if not self.metrics.exists():
            return []
        refuse_link(self.metrics)
        size = self.metrics.stat().st_size
        if size > self.METRICS_BYTES:  # checked before the file is read into memory
            raise ValueError(f"{self.metrics} is {size} bytes, more than the {self.METRICS_BYTES} a run writes "
                             "(about 300 bytes an epoch): not a metrics file of pvt train")
        out = []
        for n, line in enumerate(self.metrics.read_text(errors="replace").splitlines(), 1):
            try:
                r = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                r = None
            epoch = r.get("epoch") if isinstance(r, dict) else None
            if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
                out.append(r)
            elif not skip_damaged:
                what = (f"its epoch is {json.dumps(epoch)}, not a whole number >= 1" if isinstance(r, dict)
                        else "not a JSON object" if r is not None or not line.strip() else "not valid JSON")
                raise ValueError(f"{self.metrics} line {n} is damaged ({what}: {line[:60]!r}); pvt writes that "
                                 "file whole, so it was edited or damaged: restore the line (one JSON object per "
                                 "epoch)")
        return out

    def weights(self) -> Path:
        """The weights a reader of the run takes: ``best.safetensors``, else ``last.safetensors``
        (FileNotFoundError when neither is there; a ValueError when the one taken is a link)."""
        path = self.best if self.best.is_file() else self.last
        if not path.is_file():
            raise FileNotFoundError(f"run folder {str(self.path)!r} holds no {self.BEST} or {self.LAST}")
        refuse_link(path)
        return path

    @staticmethod
    def _metadata(path: Path) -> dict[str, Any] | None:
        """A weights file's own-format metadata; None when it is missing, a link or unreadable (as good as none)."""
        if not path.is_file() or path.is_symlink():
            return None
        try:
            return read_metadata(path)
        except ValueError:
            return None


class LogFile(logging.FileHandler):
    """train.log: appended as UTF-8 whatever the locale (an ASCII locale loses no line of a non-ASCII run
    name), never through a symbolic link (a one-line ValueError when it is one)."""

    def __init__(self, path: Path):
        refuse_link(path)
        super().__init__(path, encoding="utf-8")

    def _open(self):
        return open_log(self.baseFilename)


def resolve_checkpoint(path: str | Path) -> Path:
    """The weights file behind ``path``: the file itself, or of a run folder :meth:`RunFolder.weights`.
    FileNotFoundError when there is none."""
    p = Path(path)
    if p.is_dir():
        try:
            p = RunFolder(p).weights()
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist") from None
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return p
