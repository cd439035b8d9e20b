"""A run folder's own facts: which config values a resume may change, the config a resume continues
with, the committed metrics lines and the epoch a weights file records, the lock that keeps a second
process out and the log file (see :mod:`pvt.engine.trainer` for the folder's layout and commit order).

Every file of a run folder is untrusted on resume: config.yaml edited by hand is compared with the recipe
the weights record, metrics.jsonl is checked line by line, and no write follows a symbolic link."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..base.io import atomic_write, open_log, refuse_link
from ..weights.checkpoint import read_metadata
from .config import TrainConfig, load_yaml

__all__ = ["LOCK_FILE", "RESUME_MAY_CHANGE", "LogFile", "resume_config", "read_records", "run_lock", "saved_epoch"]

LOCK_FILE = ".pvt-train.lock"
"""Held (``flock``) by the process training in a run folder; removed when it ends."""

RESUME_MAY_CHANGE = ("epochs", "workers", "threads", "device", "data_dir")
"""The config values a resumed run may change (``epochs`` only upwards); config.yaml records each change.
Everything else is the run's recipe: a resume continues it or refuses."""


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None, *,
                  read: Callable[[dict[str, Any]], TrainConfig] = TrainConfig.from_dict) -> TrainConfig:
    """The config of the run in ``run_dir``: its ``config.yaml``, with ``overrides`` of the values in
    :data:`RESUME_MAY_CHANGE` applied. Any other value that differs from the run's own is refused: a
    resumed run continues its recipe, and config.yaml never records a value the run did not use.
    ``read`` turns the file's flat mapping into a config (:func:`pvt.tasks.read_config`, which knows the
    task's own config)."""
    run_dir, overrides = Path(run_dir), dict(overrides or {})
    if run_dir.is_file():
        raise ValueError(f"--resume expects a run folder of pvt train; {str(run_dir)!r} is a file"
                         + (f" (its run folder: pvt train --resume {run_dir.parent})"
                            if (run_dir.parent / "config.yaml").is_file() else ""))
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{str(run_dir)!r} is not a resumable run folder (it has no config.yaml)")
    saved = load_yaml(run_dir / "config.yaml")
    saved["output"], saved["name"] = str(run_dir.parent), run_dir.name
    try:
        old = read(saved)
    except ValueError as e:
        raise ValueError(f"{str(run_dir / 'config.yaml')!r} is not a valid run config: {e}") from None
    _check_hand_edits(run_dir, old, read)
    new = read({**saved, **overrides})
    if "output" in overrides and Path(str(overrides["output"])).expanduser().resolve() == run_dir.parent.resolve():
        new.output = old.output  # the same folder, spelt another way
    olds, news = old.to_dict(), new.to_dict()
    changed = [k for k in news if news[k] != olds.get(k)]
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        what = ", ".join(f"{k}={news[k]!r} (the run uses {olds.get(k)!r})" for k in refused)
        raise ValueError(
            f"cannot resume {str(run_dir)!r} with {what}: a resumed run continues its own recipe; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change (epochs only upwards). To change the rest, start a new "
            f"run from its config: pvt train --config {run_dir / 'config.yaml'} --name NEW_NAME ..."
        )
    if new.epochs < old.epochs:
        raise ValueError(
            f"cannot resume {str(run_dir)!r} with epochs={new.epochs}: the run was set up for {old.epochs} "
            "epochs (its schedule depends on it); epochs may only be extended"
        )
    return new


def _recorded_recipe(run_dir: Path) -> tuple[dict[str, Any], str] | None:
    """The training config the run's weights record (``train_config`` in last.safetensors' metadata, which
    each committed epoch rewrites) and the file's name; None when there is none to compare with."""
    path = run_dir / "last.safetensors"
    try:
        meta = read_metadata(path) if path.is_file() else None
    except ValueError:
        return None
    recorded = meta.get("train_config") if meta else None
    return (recorded, path.name) if isinstance(recorded, dict) else None


def _check_hand_edits(run_dir: Path, cfg: TrainConfig, read: Callable[[dict[str, Any]], TrainConfig]) -> None:
    """Refuse a config.yaml whose recipe (anything but :data:`RESUME_MAY_CHANGE`) differs from the one the
    run's weights were trained with: it was edited by hand, and a resume would train on with the new value
    while the saved epochs used the old. The error quotes the line that differs."""
    found = _recorded_recipe(run_dir)
    if found is None:
        return
    recorded, where = found
    try:
        used = read({**recorded, "output": cfg.output, "name": cfg.name}).to_dict()
    except ValueError:
        return  # metadata of another version: nothing reliable to compare with
    have = cfg.to_dict()
    keys = [k for k in have if k not in RESUME_MAY_CHANGE and have[k] != used.get(k)]
    if not keys:
        return
    path = run_dir / "config.yaml"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.split(":")[0] == keys[0]]
    line = lines[0].strip() if lines else f"{keys[0]}: {have[keys[0]]!r}"
    more = f" (and {', '.join(keys[1:])})" if len(keys) > 1 else ""
    raise ValueError(
        f"cannot resume {str(run_dir)!r}: its config.yaml says {line!r}{more}, but the run was trained with "
        f"{keys[0]}: {used.get(keys[0])!r} ({where} records it): config.yaml was changed by hand; a resumed "
        f"run continues its own recipe (only {', '.join(RESUME_MAY_CHANGE)} may change, as flags): restore the "
        f"line, or start a new run from the edited file: pvt train --config {path} --name NEW_NAME"
    )


def read_records(run_dir: Path, upto: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines for epochs <= ``upto`` (the committed ones: exactly epochs 1..upto, in order);
    later lines (an epoch that was not committed) are removed from the file. pvt writes the file whole
    (atomically), so a line that is not a JSON object with an integer epoch was damaged or edited: a
    one-line ValueError naming the line, and nothing is deleted."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    keep, later = [], False
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            r = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            r = None
        epoch = r.get("epoch") if isinstance(r, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            what = (f"its epoch is {json.dumps(epoch)}, not a whole number >= 1" if isinstance(r, dict)
                    else "not a JSON object" if r is not None or not line.strip() else "not valid JSON")
            raise ValueError(f"cannot resume {str(run_dir)!r}: {path} line {n} is damaged ({what}: "
                             f"{line[:60]!r}); pvt writes that file whole, so it was edited or damaged: restore "
                             "the line (one JSON object per epoch)")
        if epoch <= upto:
            keep.append(r)
        else:
            later = True
    if [r["epoch"] for r in keep] != list(range(1, upto + 1)):
        raise ValueError(f"cannot resume {str(run_dir)!r}: {path} records epochs {[r['epoch'] for r in keep]}, but "
                         f"the run committed epochs 1 to {upto}: it was edited or damaged (restore it)")
    if later:
        with atomic_write(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in keep))
    return keep


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (:data:`LOCK_FILE`, ``flock``) for the block: a second process training
    in the folder (a second ``pvt train --resume``) gets a one-line ValueError naming it. Released (and the
    file removed) when the block ends, however it ends; the kernel releases it if the process dies."""
    path = run_dir / LOCK_FILE
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
            raise ValueError(f"run folder {str(run_dir)!r} is in use by another pvt train"
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


class LogFile(logging.FileHandler):
    """train.log: appended as UTF-8 whatever the locale (an ASCII locale loses no line of a non-ASCII run
    name), never through a symbolic link (a one-line ValueError when it is one)."""

    def __init__(self, path: Path):
        refuse_link(path)
        super().__init__(path, encoding="utf-8")

    def _open(self):
        return open_log(self.baseFilename)


def saved_epoch(path: Path) -> int | None:
    """The epoch a weights file written by the trainer ends (None: no such file, or it records none)."""
    try:
        meta = read_metadata(path) if path.is_file() else None
    except ValueError:  # unreadable: as good as none
        meta = None
    epoch = meta.get("epoch") if meta else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
