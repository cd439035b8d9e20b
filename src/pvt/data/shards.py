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
An evaluation stream reads every image of its stretch once. WebDataset provides the tar parsing
(``tar_file_expander``, ``group_by_keys``) and writing (``TarWriter``), always of files this module opened
itself: its URL opener, which would run a ``pipe:`` name through a shell, is never used; the order,
the split over processes and workers and the exact counts are this module's, because WebDataset's
resampling and per-node splitting give neither equal step counts per process nor an order that depends
on the epoch alone.

``index.json`` is untrusted input: :func:`check_index` checks its types, ranges and shard names (plain
file names inside the folder) before anything uses them, and each sample's label is checked against the
classes when it is read (a missing or out-of-range label is skipped and counted, like an unreadable image).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import logging
import math
import os
import random
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from .folder import ImageFolderDataset, find_classes, load_rgb

__all__ = ["INDEX_NAME", "FORMAT", "write_shards", "read_index", "check_index", "is_shard_folder", "ShardDataset"]

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
    folder with an index is complete; an interrupted write (Ctrl-C, SIGTERM under the CLI, an error)
    removes every file it wrote, and shard files without an index (a killed write's) are refused.
    ``progress(split, done, total)`` is called after each shard.
    """
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r}: expected an integer >= 1")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {str(folder)!r} does not exist")
    bad = [s for s in splits if not _plain_name(s)]
    if bad:
        raise ValueError(f"split name {bad[0]!r}: expected a plain folder name (no '/', ':' or leading '.')")
    missing = [s for s in splits if not (folder / s).is_dir()]
    if missing:
        raise ValueError(f"data folder {str(folder)!r} has no {' or '.join(s + '/' for s in missing)}; expected "
                         f"{', '.join(s + '/' for s in splits)}, each with one folder of images per class")
    if (out / INDEX_NAME).exists():
        raise ValueError(f"{str(out)!r} already holds shards ({INDEX_NAME}); choose another folder")
    TarWriter = _webdataset("writing shards").TarWriter

    classes = find_classes(folder / splits[0])
    _clear_leftovers(out, splits)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []  # removed again if the write is interrupted, so no partial folder stays
    try:
        index = _write_splits(folder, out, classes, splits, shard_size, shuffle, seed, progress, TarWriter, written)
        tmp = out / f".{INDEX_NAME}.tmp"
        written.append(tmp)
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, out / INDEX_NAME)
    except BaseException:  # Ctrl-C, SIGTERM (as KeyboardInterrupt), a full disk, an unreadable file
        for p in written:
            p.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty
        raise
    return index


def _shard_pattern(splits: tuple[str, ...]) -> re.Pattern[str]:
    """The names :func:`write_shards` gives shards of ``splits`` (``train-000000.tar``) and their temporaries."""
    names = "|".join(map(re.escape, splits))
    return re.compile(rf"\.?(?:{names})-\d{{6}}\.tar(?:\.tmp)?|\.{re.escape(INDEX_NAME)}\.tmp")


def _clear_leftovers(out: Path, splits: tuple[str, ...]) -> None:
    """Before writing into ``out`` (which holds no index): remove the temporaries a killed write left
    (``.train-000000.tar.tmp``); refuse shard files without an index, which a killed ``make-shards`` (or
    another tool) left and which a new index would not list."""
    if not out.is_dir():
        return
    pattern = _shard_pattern(splits)
    ours = sorted(p for p in out.iterdir() if pattern.fullmatch(p.name) and not p.is_dir())
    for p in ours:
        if p.name.startswith("."):
            p.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted pvt make-shards", p)
    stale = [p for p in ours if not p.name.startswith(".")]
    if stale:
        raise ValueError(f"{str(out)!r} holds {len(stale)} shard file(s) without an {INDEX_NAME} (e.g. "
                         f"{stale[0].name!r}: left by a killed pvt make-shards or another tool); remove them or "
                         "choose another folder")


def _write_splits(folder: Path, out: Path, classes: list[str], splits: tuple[str, ...], shard_size: int,
                  shuffle: bool, seed: int, progress: Callable[[str, int, int], None] | None, TarWriter: Any,
                  written: list[Path]) -> dict[str, Any]:
    """Write every split's shards into ``out`` (appending each file to ``written`` before it is created);
    returns the index."""
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
            written += [tmp, out / name]
            # an open file, not a name: TarWriter would read a name as a URL (pipe:, http:, ...)
            with open(tmp, "wb") as f, TarWriter(f, encoder=False, mtime=0.0) as sink:
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
    return index


def is_shard_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`write_shards` (it holds ``index.json``)."""
    return (Path(path).expanduser() / INDEX_NAME).is_file()


def read_index(root: str | Path) -> dict[str, Any]:
    """The ``index.json`` of the shard folder ``root``, checked by :func:`check_index`; ValueError when it
    is not one."""
    path = Path(root).expanduser() / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{str(root)!r} is not a shard folder (no {INDEX_NAME}); write one with "
                                "pvt make-shards FOLDER OUT") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{str(path)!r}: JSON nested too deeply") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a pvt shard index (expected format {FORMAT!r})")
    check_index(index, path)
    return index


def _plain_name(name: Any) -> bool:
    """Whether ``name`` is one plain file name: no folder part, no drive or URL scheme (``pipe:``,
    ``http:``), not hidden, no control characters."""
    return (isinstance(name, str) and bool(name) and not name.startswith(".") and not any(c in name for c in "/\\:")
            and all(c >= " " for c in name))


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_index(index: dict[str, Any], where: str | Path = INDEX_NAME) -> None:
    """Check a shard index's types, ranges and names before anything uses it: ``classes`` a non-empty
    list of distinct strings; ``splits`` an object of splits, each with ``shards`` (``file``: a plain file
    name, as ``write_shards`` gives them, listed once; ``count``: an integer >= 0), ``class_counts`` (one
    integer >= 0 per class, adding up to the images of the shards), optional ``count`` (their sum) and
    ``unreadable`` (a list of strings). A one-line ValueError naming ``where`` and the field otherwise."""
    def bad(field: str, value: Any, expected: str) -> ValueError:
        shown = repr(value)
        shown = shown[:80] + "..." if len(shown) > 80 else shown
        return ValueError(f"{where}: {field} is {shown}; expected {expected}")

    version = index.get("version")
    if version != _VERSION or isinstance(version, bool):
        raise bad("'version'", version, f"{_VERSION} (this pvt reads shard index version {_VERSION})")
    classes = index.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad("'classes'", classes, "a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise bad("'classes'", classes, "distinct class names")
    splits = index.get("splits")
    if not (isinstance(splits, dict) and splits):
        raise bad("'splits'", splits, "an object of splits (train, val, ...), as pvt make-shards writes")
    for split, info in splits.items():
        at = f"splits[{split!r}]"
        if not isinstance(info, dict):
            raise bad(at, info, "an object with shards and class_counts")
        shards = info.get("shards")
        if not isinstance(shards, list):
            raise bad(f"{at}['shards']", shards, "a list of {\"file\": NAME, \"count\": N}")
        seen = set()
        for k, s in enumerate(shards):
            if not (isinstance(s, dict) and _plain_name(s.get("file"))):
                raise bad(f"{at}['shards'][{k}]", s, "{\"file\": NAME, \"count\": N} with NAME a plain file name "
                          "inside the shard folder (no '/', '..', ':' or absolute path)")
            if s["file"] in seen:
                raise bad(f"{at}['shards'][{k}]['file']", s["file"], "each shard listed once")
            seen.add(s["file"])
            if not _is_count(s.get("count")):
                raise bad(f"{at}['shards'][{k}]['count']", s.get("count"), "an integer >= 0")
        total = sum(s["count"] for s in shards)
        counts = info.get("class_counts")
        if not (isinstance(counts, list) and len(counts) == len(classes) and all(map(_is_count, counts))):
            raise bad(f"{at}['class_counts']", counts, f"a list of {len(classes)} integers >= 0 (one per class)")
        if sum(counts) != total:
            raise bad(f"{at}['class_counts']", counts, f"counts adding up to the shards' {total} images")
        if info.get("count", total) != total or isinstance(info.get("count"), bool):
            raise bad(f"{at}['count']", info.get("count"), f"the shards' {total} images")
        unreadable = info.get("unreadable", [])
        if not (isinstance(unreadable, list) and all(isinstance(u, str) for u in unreadable)):
            raise bad(f"{at}['unreadable']", unreadable, "a list of file names")


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
        inside = self.root.resolve()
        outside = [f for f in self.shards if (self.root / f).resolve().parent != inside]
        if outside:
            raise ValueError(f"shard {outside[0]!r} of {str(self.root)!r} is a link to "
                             f"{str((self.root / outside[0]).resolve())!r}, outside the shard folder; shards must "
                             "be files inside it")
        self._bad_labels = 0
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
            samples = self._shard_samples(j, wanted)
            try:
                for sample in samples:
                    yield sample
                    got += 1
                    if got == take:
                        break
            finally:
                samples.close()
            if got < take:
                raise ValueError(f"shard {str(self.root / self.shards[j])!r} holds fewer images than its index "
                                 f"says ({self.counts[j]}); write the shards again")
            pos += take
            count -= take

    def _shard_samples(self, j: int, wanted: set[str]) -> Iterator[dict[str, Any]]:
        """The samples of shard ``j`` whose keys are in ``wanted``, parsed from the file opened here (a
        local file, whatever its name: WebDataset's URL opener, which runs ``pipe:`` names through a
        shell, is never called)."""
        wds = _webdataset("reading shards").tariterators
        path = self.root / self.shards[j]
        with open(path, "rb") as f:
            files = wds.tar_file_expander([{"url": str(path), "stream": f}],
                                          select_files=lambda name: name.partition(".")[0] in wanted)
            try:
                yield from wds.group_by_keys(files)
            except tarfile.TarError as e:
                raise ValueError(f"shard {str(path)!r} is not a readable tar file ({e}); write the shards "
                                 "again") from None

    def _label(self, sample: dict[str, Any]) -> int | None:
        """The sample's label in :attr:`class_names`, or None (logged, then skipped and counted) when its
        ``.cls`` member is missing, not an integer, or outside the index's classes."""
        raw = sample.get("cls")
        label = int(raw) if isinstance(raw, bytes) and re.fullmatch(rb"\s*-?\d{1,9}\s*", raw) else None
        if label is not None and 0 <= label < len(self._label_map):
            return self._label_map[label]
        self._bad_labels += 1
        if self._bad_labels <= 3:
            what = "no .cls label" if raw is None else f"label {raw[:20]!r}"
            log.warning("skipped sample %s of shard %s: %s; expected an integer 0..%d (the index's %d classes)%s",
                        sample.get("__key__"), sample.get("__url__"), what, len(self._label_map) - 1,
                        len(self._label_map), "; further ones are counted without a message"
                        if self._bad_labels == 3 else "")
        return None

    def _decode(self, sample: dict[str, Any]) -> tuple[Any, int] | None:
        label = self._label(sample)
        key = next((k for k in sample if not k.startswith("__") and k not in ("cls", "json")), None)
        if key is None or label is None or label < 0:
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
