"""A run folder's own facts: which config values a resume may change, the config a resume continues
with, the committed metrics lines and the epoch a weights file records (see :mod:`pvt.engine.trainer`
for the folder's layout and commit order)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import read_metadata
from ..io import atomic_write
from .config import TrainConfig, load_yaml

__all__ = ["RESUME_MAY_CHANGE", "resume_config", "read_records", "saved_epoch"]

RESUME_MAY_CHANGE = ("epochs", "workers", "threads", "device", "data_dir")
"""The config values a resumed run may change (``epochs`` only upwards); config.yaml records each change.
Everything else is the run's recipe: a resume continues it or refuses."""


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run in ``run_dir``: its ``config.yaml``, with ``overrides`` of the values in
    :data:`RESUME_MAY_CHANGE` applied. Any other value that differs from the run's own is refused: a
    resumed run continues its recipe, and config.yaml never records a value the run did not use."""
    run_dir, overrides = Path(run_dir), dict(overrides or {})
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{str(run_dir)!r} is not a resumable run folder (it has no config.yaml)")
    saved = load_yaml(run_dir / "config.yaml")
    saved["output"], saved["name"] = str(run_dir.parent), run_dir.name
    try:
        old = TrainConfig.from_dict(saved)
    except ValueError as e:
        raise ValueError(f"{str(run_dir / 'config.yaml')!r} is not a valid run config: {e}") from None
    new = TrainConfig.from_dict({**saved, **overrides})
    if "output" in overrides and Path(str(overrides["output"])).expanduser().resolve() == run_dir.parent.resolve():
        new.output = old.output  # the same folder, spelt another way
    changed = [k for k in TrainConfig.field_names() if getattr(new, k) != getattr(old, k)]
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        what = ", ".join(f"{k}={getattr(new, k)!r} (the run uses {getattr(old, k)!r})" for k in refused)
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


def read_records(run_dir: Path, upto: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines for epochs <= ``upto``; later (unsaved) lines are removed from the file."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if r.get("epoch", 0) <= upto:
            keep.append(r)
    with atomic_write(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in keep))
    return keep


def saved_epoch(path: Path) -> int | None:
    """The epoch a weights file written by the trainer ends (None: no such file, or it records none)."""
    try:
        meta = read_metadata(path) if path.is_file() else None
    except ValueError:  # unreadable: as good as none
        meta = None
    epoch = meta.get("epoch") if meta else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
