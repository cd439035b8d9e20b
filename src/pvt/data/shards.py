"""Sharded image data: an ImageFolder tree written as WebDataset tar shards, and read back as a stream.

Large training runs read a few hundred large files sequentially instead of a million small ones at random
(local disk, NFS, object storage alike). The format is plain WebDataset: each shard is a tar file whose
members ``KEY.cls`` (the class index, as text), ``KEY.jpg`` (or ``.png``, ...: the original file's bytes,
never re-encoded) and ``KEY.json`` (``{"path": ..., "class": ...}``: where the image came from) make one
sample, so any WebDataset pipeline reads the shards too. Beside the shards, ``index.json`` records the
class names, and for each split its shards with their image counts, the per-class counts and the files
that could not be read::

    OUT/index.json
    OUT/train-000000.tar  OUT/train-000001.tar  ...
    OUT/val-000000.tar    ...

:func:`write_shards` shuffles the training images across shards (seeded) by default, since a stream can
only shuffle within a window; ``shuffle=False`` keeps the folder's order (used to compare with the folder).

:class:`ShardDataset` reads one split as an ``IterableDataset`` whose order is a pure function of the
seed and the epoch, which keeps a resumed run identical to an uninterrupted one. Per epoch, the shard
list is permuted (seeded by seed and epoch) and read as one sequence of images; process ``r`` of ``W``
reads the contiguous stretch ``[N r / W, N (r + 1) / W)`` of it, and its loader workers split that stretch
again, so every process reads its own shards (cut at the stretch's ends), sequentially. A training
stream reads exactly the number of samples it was given (as many as the samplers of
:mod:`pvt.engine.samplers` would), dealt to the workers in whole batches; with repeated augmentation each
image is repeated in the stream (the copies stay on one process, where the sampler spreads them over
processes). Encoded images then pass a shuffle buffer per worker before they are decoded and augmented.
An evaluation stream reads every image of its stretch once. WebDataset provides the tar reading
(``tarfile_samples``, which also opens ``pipe:`` and remote URLs) and writing (``TarWriter``); the order,
the split over processes and workers and the exact counts are this module's, because WebDataset's
resampling and per-node splitting give neither equal step counts per process nor an order that depends
on the epoch alone.
"""

from __future__ import annotations

import bisect
import io
import json
import logging
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from .folder import ImageFolderDataset, find_classes, load_rgb

__all__ = ["INDEX_NAME", "FORMAT", "write_shards", "read_index", "is_shard_folder", "ShardDataset"]

log = logging.getLogger("pvt.data")

INDEX_NAME = "index.json"
FORMAT = "pvt-shards"
_VERSION = 1


def _webdataset(what: str) -> Any:
    try:
        import webdataset
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{what} needs the webdataset package: pip install "
                                  "'pyramid-vision-transformer[data]' (or: pip install webdataset)") from None
    return webdataset


def _image_ext(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext or "img"


def write_shards(folder: str | Path, out: str | Path, *, shard_size: int = 1000, shuffle: bool = True, seed: int = 0,
                 splits: tuple[str, ...] = ("train", "val"), progress: Callable[[str, int, int], None] | None = None,
                 ) -> dict[str, Any]:
    """Write the ImageFolder tree ``folder`` (``<split>/<class>/<image>``) as tar shards of ``shard_size``
    images in ``out``, with ``index.json``; returns the index.

    Class names and indices are the training split's (sorted folders), as :class:`ImageFolderDataset`
    gives them; files whose header cannot be read are left out and listed. The training images are
    shuffled across shards with ``seed`` unless ``shuffle`` is False; other splits keep the folder's
    order. Each shard is written under a temporary name and renamed, and ``index.json`` comes last, so a
    folder with an index is complete. ``progress(split, done, total)`` is called after each shard.
    """
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r}: expected an integer >= 1")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {str(folder)!r} does not exist")
    missing = [s for s in splits if not (folder / s).is_dir()]
    if missing:
        raise ValueError(f"data folder {str(folder)!r} has no {' or '.join(s + '/' for s in missing)}; expected "
                         f"{', '.join(s + '/' for s in splits)}, each with one folder of images per class")
    if (out / INDEX_NAME).exists():
        raise ValueError(f"{str(out)!r} already holds shards ({INDEX_NAME}); choose another folder")
    TarWriter = _webdataset("writing shards").TarWriter

    classes = find_classes(folder / splits[0])
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"format": FORMAT, "version": _VERSION, "classes": classes, "source": str(folder),
                             "splits": {}}
    for split in splits:
        ds = ImageFolderDataset(folder / split, None, class_names=classes, require_all=split == splits[0])
        samples = list(ds.samples)
        shuffled = shuffle and split == "train"
        if shuffled:
            random.Random(seed).shuffle(samples)
        shards, counts = [], [0] * len(classes)
        for first in range(0, len(samples), shard_size):
            name = f"{split}-{first // shard_size:06d}.tar"
            tmp = out / f".{name}.tmp"
            with TarWriter(str(tmp), encoder=False, mtime=0.0) as sink:
                for key, (path, label) in enumerate(samples[first:first + shard_size], start=first):
                    rel = Path(path).relative_to(folder).as_posix()
                    sink.write({"__key__": f"{key:08d}", "cls": str(label).encode(),
                                _image_ext(path): Path(path).read_bytes(),
                                "json": json.dumps({"path": rel, "class": classes[label]}).encode()})
                    counts[label] += 1
            os.replace(tmp, out / name)
            shards.append({"file": name, "count": len(samples[first:first + shard_size])})
            if progress is not None:
                progress(split, min(first + shard_size, len(samples)), len(samples))
        index["splits"][split] = {
            "count": len(samples), "shards": shards, "class_counts": counts, "shuffled": shuffled,
            "seed": seed if shuffled else None,
            "unreadable": [Path(p).relative_to(folder).as_posix() for p in ds.unreadable],
        }
    tmp = out / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_NAME)
    return index


def is_shard_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`write_shards` (it holds ``index.json``)."""
    return (Path(path).expanduser() / INDEX_NAME).is_file()


def read_index(root: str | Path) -> dict[str, Any]:
    """The ``index.json`` of the shard folder ``root``; ValueError when it is not one."""
    path = Path(root).expanduser() / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{str(root)!r} is not a shard folder (no {INDEX_NAME}); write one with "
                                "pvt make-shards FOLDER OUT") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a pvt shard index (expected format {FORMAT!r})")
    return index


def _buffered(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """``items`` shuffled within a window of ``size`` (each new item replaces a random one of the window,
    which is yielded; the rest in random order at the end)."""
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = x
    rng.shuffle(buf)
    yield from buf


class ShardDataset(IterableDataset):
    """One split of a shard folder as a stream of ``(image, label)`` (``None`` for an image that cannot
    be decoded: :func:`~pvt.data.folder.collate_skipping` drops and counts it).

    Args:
        root: the shard folder (``index.json`` inside).
        split: ``"train"``, ``"val"``, ...
        transform: PIL image -> tensor.
        class_names: the label order to use (e.g. a checkpoint's); the shards' classes must be among
            them. Default: the shards' own.
        raw: yield the encoded bytes as a 1-D uint8 tensor instead of a decoded, transformed image (for
            decoding and augmenting on the training device).

    Until :meth:`distribute` is called it reads the whole split once, in the stored order (evaluation in
    one process); loader workers split it between them.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable[[Image.Image], Tensor] | None = None, *,
                 class_names: list[str] | None = None, raw: bool = False):
        self.root = Path(root).expanduser()
        index = read_index(self.root)
        if split not in index["splits"]:
            raise ValueError(f"shard folder {str(self.root)!r} has no split {split!r}; it has "
                             f"{', '.join(index['splits'])}")
        info = index["splits"][split]
        own = list(index["classes"])
        self.class_names = list(class_names) if class_names is not None else own
        unknown = [c for c, n in zip(own, info["class_counts"]) if n and c not in self.class_names]
        if unknown:
            raise ValueError(f"class(es) {', '.join(map(repr, unknown))} of {str(self.root)!r} are not among the "
                             f"training classes ({', '.join(self.class_names)})")
        self._label_map = [self.class_names.index(c) if c in self.class_names else -1 for c in own]
        self.split, self.transform, self.raw = split, transform, raw
        self.shards: list[str] = [s["file"] for s in info["shards"]]
        self.counts: list[int] = [int(s["count"]) for s in info["shards"]]
        self.starts: list[int] = [0]
        for c in self.counts[:-1]:
            self.starts.append(self.starts[-1] + c)  # the key of each shard's first image
        self.unreadable: list[str] = list(info.get("unreadable", []))
        if not self.counts or sum(self.counts) == 0:
            raise ValueError(f"shard folder {str(self.root)!r} has no {split} images")
        missing = [f for f in self.shards if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"shard folder {str(self.root)!r} lacks {len(missing)} shard(s) its index "
                                    f"lists, e.g. {missing[0]!r}")
        self.distribute(0, 1)
        self.epoch = 0

    def __len__(self) -> int:
        return sum(self.counts)

    # -- the plan ------------------------------------------------------------------------------
    def distribute(self, rank: int, world_size: int, *, samples: int | None = None, batch_size: int = 1,
                   repeats: int = 1, shuffle: bool = False, seed: int = 0, buffer: int = 0) -> None:
        """Read process ``rank``'s part of each epoch, of ``world_size`` processes.

        ``samples=None`` (evaluation): every image of the process's stretch once, in order. Otherwise
        (training): exactly ``samples`` items (a multiple of ``batch_size``), each image repeated
        ``repeats`` times; with ``shuffle``, the shard order permuted per epoch and a window of
        ``buffer`` encoded images shuffled per worker, seeded by ``seed``, the epoch, the rank and the
        worker.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if samples is not None and samples % batch_size:
            raise ValueError(f"samples={samples} is not a multiple of batch_size={batch_size}")
        self.rank, self.world_size, self.samples, self.batch_size = rank, world_size, samples, batch_size
        self.repeats, self.shuffle, self.seed, self.buffer = repeats, shuffle, seed, buffer

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_order(self) -> list[int]:
        """This epoch's order of the shards (indices into :attr:`shards`)."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(order)
        return order

    def worker_plan(self, worker: int = 0, num_workers: int = 1) -> tuple[int, int, int]:
        """``(first, distinct, emitted)`` of loader worker ``worker``: it reads ``distinct`` images starting
        at position ``first`` of its process's stretch (wrapping around inside the stretch), and emits
        ``emitted`` items (training: whole batches; evaluation: each image once)."""
        n = len(self)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        length = hi - lo
        if self.samples is None:
            a, b = length * worker // num_workers, length * (worker + 1) // num_workers
            return a, b - a, b - a
        steps = self.samples // self.batch_size
        batches = [steps // num_workers + (w < steps % num_workers) for w in range(num_workers)]
        distinct = [math.ceil(b * self.batch_size / self.repeats) for b in batches]
        return sum(distinct[:worker]) % max(length, 1), distinct[worker], batches[worker] * self.batch_size

    # -- reading -------------------------------------------------------------------------------
    def _read(self, order: list[int], first: int, count: int) -> Iterator[dict[str, Any]]:
        """``count`` raw samples of this process's stretch from its position ``first`` on, wrapping
        around at the stretch's end; each shard is opened once per run of consecutive reads."""
        tarfile_samples = _webdataset("reading shards").tariterators.tarfile_samples

        n = len(self)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        if count and hi == lo:
            raise ValueError(f"process {self.rank} of {self.world_size} has no {self.split} images to read")
        pos = lo + first
        ends = [0]
        for j in order:
            ends.append(ends[-1] + self.counts[j])
        while count > 0:
            if pos >= hi:
                pos = lo
            k = bisect.bisect_right(ends, pos) - 1  # the shard holding position pos
            j = order[k]
            skip = pos - ends[k]
            take = min(count, hi - pos, self.counts[j] - skip)
            keys = range(self.starts[j] + skip, self.starts[j] + skip + take)
            wanted = {f"{x:08d}" for x in keys}
            got = 0
            for sample in tarfile_samples([{"url": str(self.root / self.shards[j])}],
                                          select_files=lambda f: f.partition(".")[0] in wanted):
                yield sample
                got += 1
                if got == take:
                    break
            if got < take:
                raise ValueError(f"shard {str(self.root / self.shards[j])!r} holds fewer images than its index "
                                 f"says ({self.counts[j]}); write the shards again")
            pos += take
            count -= take

    def _decode(self, sample: dict[str, Any]) -> tuple[Any, int] | None:
        label = self._label_map[int(sample["cls"])]
        key = next((k for k in sample if not k.startswith("__") and k not in ("cls", "json")), None)
        if key is None or label < 0:
            return None
        if self.raw:
            return torch.frombuffer(bytearray(sample[key]), dtype=torch.uint8), label
        try:
            img = load_rgb(io.BytesIO(sample[key]))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            log.warning("skipped unreadable image %s in %s (%s)", sample.get("__key__"), sample.get("__url__"), e)
            return None
        return (self.transform(img) if self.transform else img), label

    def __iter__(self) -> Iterator[tuple[Any, int] | None]:
        info = get_worker_info()
        return self.worker_stream(*((info.id, info.num_workers) if info is not None else (0, 1)))

    def worker_stream(self, worker: int = 0, num_workers: int = 1) -> Iterator[tuple[Any, int] | None]:
        """What loader worker ``worker`` of ``num_workers`` yields this epoch (:meth:`__iter__` in a worker)."""
        first, distinct, emitted = self.worker_plan(worker, num_workers)
        stream: Iterator[Any] = self._read(self.shard_order(), first, distinct)
        if self.samples is not None:
            if self.repeats > 1:
                stream = (s for s in stream for _ in range(self.repeats))
            if self.shuffle and self.buffer > 1:
                rng = random.Random(f"buffer:{self.seed}:{self.epoch}:{self.rank}:{worker}")
                stream = _buffered(stream, min(self.buffer, distinct * self.repeats), rng)
        for i, sample in enumerate(stream):
            if i == emitted:
                break
            yield self._decode(sample)
