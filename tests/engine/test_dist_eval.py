"""Distributed evaluation: two gloo processes score their unpadded slices of a validation set whose size
does not divide by 2, and the merged top-1 / top-5 / loss / image count are the single process's (the
engine's own loaders and merge, not a copy of them)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from pvt.tasks import create_task, resolve_config

CFG = dict(img_size=32, batch_size=2, workers=0, threads=1, model="pvt_v2_b0", device="cpu", model_ema=True)


def _task_and_model(data: str):
    task = create_task(resolve_config(data=data, **CFG))
    train_ds, val_ds = task.build_datasets()
    torch.manual_seed(0)
    model = task.build_model().eval()
    return task, model, train_ds, val_ds


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    import torch.distributed as dist
    from timm.utils import ModelEmaV3

    from pvt.engine.trainer import Trainer, _Run

    task, model, train_ds, val_ds = _task_and_model(data)
    trainer = Trainer(task.cfg, task, quiet=True)  # joins the process group (gloo)
    run = _Run(model=model, ddp_model=model, train_ds=train_ds, val_ds=val_ds)
    run.ema = ModelEmaV3(model, decay=0.5)
    trainer._make_loaders(run)
    metrics = trainer._evaluate(run)
    slice_ = len(run.val_loader.sampler)
    sizes = [None] * world
    dist.all_gather_object(sizes, slice_)
    if rank == 0:
        Path(out).write_text(json.dumps({"metrics": metrics, "slices": sizes}))
    else:
        assert metrics == {}
    dist.destroy_process_group()


def test_two_processes_score_exactly_as_one(tmp_path, make_stripes):
    data = make_stripes(tmp_path / "data", n_train=2, n_val=3)  # 9 validation images: slices of 4 and 5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "metrics.json"
    mp.start_processes(_worker, args=(2, port, str(data), str(out)), nprocs=2, start_method="spawn")
    got = json.loads(out.read_text())
    assert got["slices"] == [4, 5]

    task, model, _, val_ds = _task_and_model(str(data))
    ref = task.evaluate(model, DataLoader(val_ds, batch_size=2, collate_fn=task.collate_fn), torch.device("cpu"))
    merged = got["metrics"]
    assert merged["images"] == ref["images"] == 9.0
    assert (merged["top1"], merged["top5"]) == (ref["top1"], ref["top5"])
    assert merged["loss"] == pytest.approx(ref["loss"], rel=1e-12)
    assert (merged["ema_top1"], merged["ema_images"]) == (ref["top1"], 9.0)  # the EMA starts as the model
