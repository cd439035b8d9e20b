"""Resuming a run: which config values a resume may change, and the config it continues with. The run
folder itself (its files, their commit order, reading them back untrusted) is
:class:`pvt.weights.run_folder.RunFolder`.

config.yaml edited by hand is compared with the recipe the weights record, and refused when they differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..weights.run_folder import RunFolder
from .config import TrainConfig

__all__ = ["RESUME_MAY_CHANGE", "resume_config"]

RESUME_MAY_CHANGE = ("epochs", "workers", "threads", "device", "data_dir")
"""The config values a resumed run may change (``epochs`` only upwards); config.yaml records each change.
Everything else is the run's recipe: a resume continues it or refuses."""


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None, *,
                  read: Callable[[dict[str, Any]], TrainConfig]) -> TrainConfig:
    """The config of the run in ``run_dir``: its ``config.yaml``, with ``overrides`` of the values in
    :data:`RESUME_MAY_CHANGE` applied. Any other value that differs from the run's own is refused: a
    resumed run continues its recipe, and config.yaml never records a value the run did not use.
    ``read`` turns the file's flat mapping into a config (:func:`pvt.tasks.read_config`, which knows the
    task's own config)."""
    run_dir, overrides = Path(run_dir), dict(overrides or {})
    folder = RunFolder(run_dir)
    if run_dir.is_file():
        raise ValueError(f"--resume expects a run folder of pvt train; {str(run_dir)!r} is a file"
                         + (f" (its run folder: pvt train --resume {run_dir.parent})"
                            if RunFolder(run_dir.parent).is_run() else ""))
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if not folder.is_run():
        raise ValueError(f"{str(run_dir)!r} is not a resumable run folder (it has no {RunFolder.CONFIG})")
    saved = folder.read_config()
    saved["output"], saved["name"] = str(run_dir.parent), run_dir.name
    try:
        old = read(saved)
    except ValueError as e:
        raise ValueError(f"{str(folder.config)!r} is not a valid run config: {e}") from None
    _check_hand_edits(folder, old, read)
    new = read({**saved, **overrides})
    if "output" in overrides and Path(str(overrides["output"])).expanduser().resolve() == run_dir.parent.resolve():
        new.output = old.output  # the same folder, spelt another way
    olds, news = old.to_dict(), new.to_dict()
    # ``read`` tolerates the keys of former versions in a recorded file, so a flag of another task would
    # vanish here: refuse it instead of resuming without it
    foreign = sorted(set(overrides) - set(news))
    if foreign:
        raise ValueError(f"cannot resume {str(run_dir)!r} with {', '.join(foreign)}: not a setting of this run "
                         f"(task {old.task!r}); only {', '.join(RESUME_MAY_CHANGE)} may change on a resume")
    changed = [k for k in news if news[k] != olds.get(k)]
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        what = ", ".join(f"{k}={news[k]!r} (the run uses {olds.get(k)!r})" for k in refused)
        raise ValueError(
            f"cannot resume {str(run_dir)!r} with {what}: a resumed run continues its own recipe; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change (epochs only upwards). To change the rest, start a new "
            f"run from its config: pvt train --config {folder.config} --name NEW_NAME ..."
        )
    if new.epochs < old.epochs:
        raise ValueError(
            f"cannot resume {str(run_dir)!r} with epochs={new.epochs}: the run was set up for {old.epochs} "
            "epochs (its schedule depends on it); epochs may only be extended"
        )
    return new


def _check_hand_edits(folder: RunFolder, cfg: TrainConfig, read: Callable[[dict[str, Any]], TrainConfig]) -> None:
    """Refuse a config.yaml whose recipe (anything but :data:`RESUME_MAY_CHANGE`) differs from the one the
    run's weights were trained with: it was edited by hand, and a resume would train on with the new value
    while the saved epochs used the old. The error quotes the line that differs."""
    recorded = folder.recorded_config()
    if recorded is None:
        return
    try:
        used = read({**recorded, "output": cfg.output, "name": cfg.name}).to_dict()
    except ValueError:
        return  # metadata of another version: nothing reliable to compare with
    have = cfg.to_dict()
    keys = [k for k in have if k not in RESUME_MAY_CHANGE and have[k] != used.get(k)]
    if not keys:
        return
    path = folder.config
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.split(":")[0] == keys[0]]
    line = lines[0].strip() if lines else f"{keys[0]}: {have[keys[0]]!r}"
    more = f" (and {', '.join(keys[1:])})" if len(keys) > 1 else ""
    raise ValueError(
        f"cannot resume {str(folder.path)!r}: its {path.name} says {line!r}{more}, but the run was trained with "
        f"{keys[0]}: {used.get(keys[0])!r} ({folder.LAST} records it): {path.name} was changed by hand; a resumed "
        f"run continues its own recipe (only {', '.join(RESUME_MAY_CHANGE)} may change, as flags): restore the "
        f"line, or start a new run from the edited file: pvt train --config {path} --name NEW_NAME"
    )
