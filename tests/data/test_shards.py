"""Shards: ``pvt make-shards`` round-trips an ImageFolder tree; the stream reads each process's stretch
(every image exactly once for evaluation, exact whole batches per worker for training) in an order that is
a function of the seed and the epoch; training from shards equals training from the folder when both
read in the same order."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import pvt
from pvt.cli import main
from pvt.data import ImageFolderDataset, ShardDataset, read_index
from pvt.engine.samplers import RepeatedAugSampler


def _bytes(ds) -> list[tuple[bytes, int]]:
    return [(x.numpy().tobytes(), y) for x, y in ds]


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_stripes):
    root = make_stripes(tmp_path_factory.mktemp("stripes"), n_train=7, n_val=3)  # 21 train, 9 val images
    (root / "train" / "vertical" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def ordered(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "ordered"
    assert main(["make-shards", str(data), str(out), "--shard-size", "4", "--no-shuffle"]) == 0
    return out


def test_make_shards_round_trips_the_folder(data, ordered, tmp_path, capsys):
    index = read_index(ordered)
    train = index["splits"]["train"]
    assert index["classes"] == ["diagonal", "horizontal", "vertical"]
    assert train["count"] == 21 and [s["count"] for s in train["shards"]] == [4, 4, 4, 4, 4, 1]
    assert train["class_counts"] == [7, 7, 7] and train["unreadable"] == ["train/vertical/broken.png"]
    assert index["splits"]["val"]["count"] == 9
    for split in ("train", "val"):  # the same bytes and labels, in the folder's order
        folder = ImageFolderDataset(data / split, raw=True)
        assert _bytes(ShardDataset(ordered, split, raw=True)) == [(folder[i][0].numpy().tobytes(), folder[i][1])
                                                                  for i in range(len(folder))]
    # shuffled shards hold the same images, in another order
    assert main(["make-shards", str(data), str(tmp_path / "mixed"), "--shard-size", "4"]) == 0
    mixed, plain = _bytes(ShardDataset(tmp_path / "mixed", "train", raw=True)), _bytes(
        ShardDataset(ordered, "train", raw=True))
    assert Counter(mixed) == Counter(plain) and mixed != plain
    assert "train: 21 images of 3 classes in 6 shards (shuffled, seed 0), 1 unreadable files left out" in \
        capsys.readouterr().out
    # plain WebDataset members: KEY.cls, KEY.png, KEY.json
    import tarfile

    with tarfile.open(ordered / "train-000000.tar") as tar:
        assert sorted(tar.getnames()[:3]) == ["00000000.cls", "00000000.json", "00000000.png"]
        assert json.loads(tar.extractfile("00000000.json").read()) == {"path": "train/diagonal/0.png",
                                                                       "class": "diagonal"}
    assert main(["make-shards", str(data), str(ordered)]) == 2  # never over existing shards
    assert "already holds shards" in capsys.readouterr().err


def test_evaluation_streams_read_every_image_exactly_once(ordered):
    ds = ShardDataset(ordered, "val", raw=True)
    everything = _bytes(ds)
    for world in (1, 2, 4):
        for workers in (1, 2, 3):
            got = []
            for rank in range(world):
                ds.distribute(rank, world)
                for w in range(workers):
                    got += [(x.numpy().tobytes(), y) for x, y in ds.worker_stream(w, workers)]
            assert sorted(got) == sorted(everything), (world, workers)


def test_training_streams_read_whole_batches_in_an_order_of_seed_and_epoch(ordered):
    def epoch(ds, epoch, rank, world, workers=2):
        ds.set_epoch(epoch)
        ds.distribute(rank, world, samples=8, batch_size=4, repeats=3, shuffle=True, seed=5, buffer=6)
        return [[(x.numpy().tobytes(), y) for x, y in ds.worker_stream(w, workers)] for w in range(workers)]

    a, b = ShardDataset(ordered, "train", raw=True), ShardDataset(ordered, "train", raw=True)
    for e in range(3):
        runs = epoch(a, e, 1, 2)
    assert epoch(b, 2, 1, 2) == runs  # a fresh reader (a resumed run) reads what one that ran epochs 0-2 read
    assert [len(w) for w in runs] == [4, 4]  # 2 steps of 4 per process, one batch per worker
    assert epoch(b, 3, 1, 2) != runs and epoch(b, 2, 0, 2) != runs
    # each image is repeated 3 times in its worker's stream: 4 items come from 2 images
    assert [len(set(w)) for w in runs] == [2, 2]
    # shuffle off, one process: the order of the repeated-augmentation sampler with shuffle off
    b.set_epoch(0)
    b.distribute(0, 1, samples=12, batch_size=4, repeats=3)
    sampler = RepeatedAugSampler(len(b), 1, 0, shuffle=False)
    plain = _bytes(ShardDataset(ordered, "train", raw=True))
    assert _bytes(b) == [plain[i] for i in list(sampler)[:12]]


def test_loader_workers_split_the_stream(ordered):
    ds = ShardDataset(ordered, "train", raw=True)
    ds.distribute(0, 2, samples=9, batch_size=3, shuffle=True, seed=1, buffer=4)
    ds.set_epoch(4)
    loader = DataLoader(ds, batch_size=3, num_workers=2, drop_last=True, collate_fn=lambda b: b)
    batches = list(loader)
    assert len(batches) == 3  # exactly the steps asked for, whatever the workers' share of the shards
    expect = [s for w in (0, 1) for s in ds.worker_stream(w, 2)]
    assert sorted((x.numpy().tobytes(), y) for b in batches for x, y in b) == sorted(
        (x.numpy().tobytes(), y) for x, y in expect)


def test_unknown_classes_and_missing_shards_are_named(ordered, tmp_path):
    with pytest.raises(ValueError, match="'vertical' of .* are not among the training classes"):
        ShardDataset(ordered, "val", class_names=["diagonal", "horizontal"])
    with pytest.raises(ValueError, match="has no split 'test'"):
        ShardDataset(ordered, "test")
    import shutil

    broken = shutil.copytree(ordered, tmp_path / "broken")
    (broken / "train-000003.tar").unlink()
    with pytest.raises(FileNotFoundError, match="lacks 1 shard"):
        ShardDataset(broken, "train")


ARGS = dict(epochs=2, batch_size=4, workers=0, threads=1, img_size=32, model="pvt_v2_b0", warmup_epochs=0.5,
            lr=1e-3, repeated_aug=True, quiet=True)  # (forced on: one process leaves it off by default)


def test_training_from_shards_equals_the_folder_in_the_same_order(data, ordered, tmp_path):
    """The whole recipe (repeated augmentation, RandAugment, erasing, mixup / cutmix, stochastic depth) with
    shuffling off: the folder and its unshuffled shards feed the same images in the same order, and the
    augmentations draw the same random numbers, so the runs are the same."""
    runs = {name: pvt.train(data=str(src), output=str(tmp_path), name=name, shuffle=False, **ARGS)
            for name, src in (("folder", data), ("shards", ordered))}
    a, b = (load_file(runs[n].last_checkpoint) for n in ("folder", "shards"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["head.weight"].abs().sum() > 0
    keys = ("train_loss", "val_loss", "val_top1", "val_top5", "val_images", "skipped_images")
    assert [[r.get(k) for k in keys] for r in runs["folder"].metrics] == \
        [[r.get(k) for k in keys] for r in runs["shards"].metrics]
    assert runs["shards"].metrics[0]["skipped_images"] == 1  # the unreadable file, found when the shards were made
    # with shuffling on the two runs read other orders, and differ
    mixed = pvt.train(data=str(ordered), output=str(tmp_path), name="mixed", **ARGS)
    assert not torch.equal(load_file(mixed.last_checkpoint)["head.weight"], b["head.weight"])


class _Killed(Exception):
    """Stands for a kill right after an epoch was saved."""


def test_resume_from_shards_with_loader_workers_is_exact(ordered, tmp_path, monkeypatch):
    """A run stopped after its first saved epoch and resumed ends as the uninterrupted run, with shuffled
    shards and a loader worker: the epoch's order depends on the seed and the epoch only, and each epoch's
    worker seeds come from the saved random state."""
    from pvt.engine.trainer import Trainer

    kw = dict(ARGS, data=str(ordered), output=str(tmp_path), epochs=3, workers=1)
    straight = pvt.train(name="straight", **kw)
    epoch = Trainer._epoch

    def stop_after_first(self, run, e):
        epoch(self, run, e)
        if e == 0:
            raise _Killed

    monkeypatch.setattr(Trainer, "_epoch", stop_after_first)
    with pytest.raises(_Killed):
        pvt.train(name="stopped", **kw)
    monkeypatch.setattr(Trainer, "_epoch", epoch)
    resumed = pvt.train(resume=tmp_path / "stopped", quiet=True)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    a, b = load_file(straight.last_checkpoint), load_file(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in straight.metrics]


@pytest.mark.slow
def test_shuffled_shards_learn_as_well_as_the_folder(tmp_path, make_stripes):
    """With shuffling on, shard and folder runs read different orders; over six seeds their held-out
    accuracies agree within the seed-to-seed spread, well above chance (33 %)."""
    import statistics

    data = make_stripes(tmp_path / "data", n_train=16, n_val=10, seed=1)
    assert main(["make-shards", str(data), str(tmp_path / "shards"), "--shard-size", "6"]) == 0
    kw = dict(epochs=15, batch_size=8, workers=0, threads=1, img_size=32, model="pvt_v2_b0", warmup_epochs=1,
              lr=2e-3, repeated_aug=False, aa="none", mixup=0.0, cutmix=0.0, reprob=0.0, quiet=True,
              output=str(tmp_path / "runs"))
    final = {src: [pvt.train(data=str(tmp_path / src), name=f"{src}{s}", seed=s, **kw).metrics[-1]["val_top1"]
                   for s in range(6)] for src in ("data", "shards")}
    means = {k: statistics.mean(v) for k, v in final.items()}
    spread = math.sqrt(sum(statistics.variance(v) / len(v) for v in final.values()))
    assert min(means.values()) > 60, final
    assert abs(means["data"] - means["shards"]) < 2.5 * spread, (final, spread)
