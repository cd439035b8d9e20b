"""Fault injection for tests/engine/test_faults.py, run as a script in its own process (it forks, so it
must not share a process with other tests' thread pools).

``python fault_driver.py DATA OUT MODES`` trains one short run uninterrupted (the reference), recording
every file commit (:func:`pvt.base.io._commit`) it makes. Then, for each mode and each commit k, a forked child
trains the same run and at its k-th commit:

* ``kill``: truncates the half-written temporary file and dies at once (``os._exit``, as SIGKILL would);
* ``term``: sends itself SIGTERM (the trainer must finish the epoch's files first, or stop before them);
* ``full``: fails the write with ENOSPC (a full disk).

``kill`` is tried at every commit; ``term`` and ``full`` at the run's first two (config.yaml, classes.json)
and at every commit of the last epoch (which writes best.safetensors too), to keep the test short.

Another child then recovers it as a user would: ``--resume`` when the run folder has its config.yaml,
else the same command again. Prints one JSON object: the reference's commits and, per (mode, k), the recovered run's
weights digests, metrics, best epoch and leftovers, for the test to compare.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)  # before any op: forking is then safe (no thread pool exists)

from safetensors.torch import load_file  # noqa: E402
from tiny_run import ARGS, TINY, TINY_VARIANT  # noqa: E402  (this script's folder is on sys.path)

import pvt  # noqa: E402
import pvt.base.io
from pvt.engine.trainer import Trainer  # noqa: E402
from pvt.models.variants import VARIANTS

VARIANTS[TINY] = TINY_VARIANT  # registered in this process (and its children) only

# Scripted validation top-1 per epoch, so that on any machine epoch 1 is best, epoch 2 ties it and epoch 3
# beats it: best.safetensors is written at epoch 1 and replaced once, at epoch 3.
SCRIPTED_TOP1 = {1: 50.0, 2: 50.0, 3: 66.7}
_real_evaluate = Trainer._evaluate


def _scripted_evaluate(self, run):
    metrics = _real_evaluate(self, run)
    if metrics:  # rank 0
        metrics["top1"] = SCRIPTED_TOP1[len(run.records) + 1]
    return metrics


Trainer._evaluate = _scripted_evaluate


def digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    sd = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].numpy().tobytes())
    return h.hexdigest()


def summary(run: Path) -> dict:
    from pvt.weights.checkpoint import read_metadata

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "last": digest(run / "last.safetensors"),
        "best": digest(run / "best.safetensors"),
        "best_file_epoch": read_metadata(run / "best.safetensors").get("epoch"),
        "last_file_epoch": read_metadata(run / "last.safetensors").get("epoch"),
        "state_epoch": int(torch.load(run / "state.pt", weights_only=True)["epoch"]),
        "metrics": [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_top1")} for r in lines],
        "leftovers": sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")),
    }


def train(data: str, out: Path, name: str, resume: bool) -> None:
    if resume:
        pvt.train(resume=out / name, quiet=True)
    else:
        pvt.train(data=data, output=str(out), name=name, **ARGS)


def in_child(fn) -> int:
    """Run ``fn`` in a forked child; its exit status (signals as 128 + n)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except KeyboardInterrupt as e:
            code = 128 + getattr(e, "signum", 2)
        except BaseException as e:  # noqa: BLE001  (reported through the status)
            print(f"child error: {type(e).__name__}: {e}", file=sys.stderr)
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def faulty(k: int, mode: str):
    """A :func:`pvt.base.io._commit` that fails the ``k``-th commit (1-based) as ``mode`` says."""
    real = pvt.base.io._commit
    count = [0]

    def commit(tmp: str, path: Path) -> None:
        count[0] += 1
        if count[0] == k:
            if mode == "kill":
                with open(tmp, "r+b") as f:  # the kill came while the file was half written
                    f.truncate(os.path.getsize(tmp) // 2)
                os._exit(137)
            if mode == "term":
                os.kill(os.getpid(), signal.SIGTERM)
            if mode == "full":
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    return commit


def main() -> None:
    data, out, modes = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
    commits: list[str] = []
    real = pvt.base.io._commit

    def record(tmp: str, path: Path) -> None:
        commits.append(Path(path).name)
        real(tmp, path)

    pvt.base.io._commit = record
    train(data, out, "reference", resume=False)
    pvt.base.io._commit = real
    result = {"commits": commits, "reference": summary(out / "reference"), "cases": {}}
    curves = [i for i, name in enumerate(commits, 1) if name == "learning_curves.png"]  # each epoch's last
    last_epoch = curves[-2] + 1  # the last epoch's first commit (1-based)
    for mode in modes:
        points = range(1, len(commits) + 1) if mode == "kill" else [1, 2, *range(last_epoch, len(commits) + 1)]
        for k in points:
            name = f"{mode}-{k}"

            def broken() -> None:
                pvt.base.io._commit = faulty(k, mode)
                train(data, out, name, resume=False)

            status = in_child(broken)
            run = out / name
            resumable = (run / "config.yaml").is_file()  # else the user runs the same command again
            recovered = in_child(lambda: train(data, out, name, resume=resumable))
            case = {"status": status, "resumed": resumable, "recovered": recovered}
            if recovered == 0:
                case.update(summary(run))
            result["cases"][name] = case
    print(json.dumps(result))


if __name__ == "__main__":
    main()
