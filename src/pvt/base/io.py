"""Atomic file writes: every write goes to a temporary file in the same folder, is flushed to disk and
then renamed over the target, so a kill at any moment leaves either the old file or the new one, never
a broken one. A full disk is reported as one :class:`DiskFullError` naming the file (the writers' own
messages differ: ``No space left on device``, torch's ``unexpected pos``).

And the readers of untrusted files, each bounded before anything is built from them: JSON
(:func:`read_json`), YAML (:func:`safe_yaml`: size, nesting, aliases expanded) and PyTorch files
(:func:`load_torch`: weights only, zip members no larger than the file allows)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

__all__ = ["TMP_SUFFIX", "DiskFullError", "atomic_write", "atomic_via", "atomic_save_torch", "atomic_folder",
           "cache_root", "check_apart", "load_torch", "open_log", "read_json", "read_yaml", "refuse_link", "remove_temporaries",
           "safe_yaml", "YAML_LIMITS"]


def cache_root(*parts: str) -> Path:
    """pvt's cache folder (built-in data, compiled code): ``$PVT_CACHE`` when set and not empty, else
    ``~/.cache/pvt``; ``parts`` name a folder inside it. Nothing is created here."""
    return Path(os.environ.get("PVT_CACHE") or Path.home() / ".cache" / "pvt", *parts)


TMP_SUFFIX = ".tmp"
"""Temporary files are ``.<name>.<random>.tmp`` beside their target."""
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# what writers that do not raise OSError say when a write fails for want of space
_FULL_TEXT = ("no space left", "unexpected pos", "file write failed", "file too large", "quota exceeded")


class DiskFullError(OSError):
    """A file could not be written for want of space (disk full, quota, file-size limit); the previous
    version of the file is intact."""


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        return True
    return isinstance(e, Exception) and any(t in str(e).lower() for t in _FULL_TEXT)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (0o666 less the umask); mkstemp uses 0o600."""
    return 0o666 & ~_umask()


def _commit(tmp: str, path: Path) -> None:
    """Make the finished temporary file ``tmp`` the file at ``path``, durably."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)
    _sync_dir(path.parent)  # make the rename itself durable


def refuse_link(path: str | Path) -> None:
    """A one-line ValueError when ``path`` is a symbolic link: no pvt write goes through a link (one in a run
    or output folder could point anywhere outside it; replacing it would silently cut it)."""
    if os.path.islink(path):
        raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}): pvt writes no file through a link, "
                         "so that nothing outside the folder is touched; remove the link or name the file itself")


def open_log(path: str | Path):
    """``path`` opened for appending text as UTF-8 (whatever the locale), refusing a symbolic link
    (``O_NOFOLLOW``) with a one-line ValueError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(path)
        raise
    return open(fd, "a", encoding="utf-8", errors="backslashreplace")


@contextlib.contextmanager
def _atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; once the body has written it, fsync it and rename it over
    ``path``. On any exception (a kill included) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    refuse_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _disk_full(e) and not isinstance(e, DiskFullError):
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            full = DiskFullError(f"cannot write {str(path)!r}: out of space (disk full, quota or file-size limit: "
                                 f"{reason}); its previous version is intact")
            full.errno = errno.ENOSPC
            raise full from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    with _atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_via(path: str | Path, writer: Callable[[str], None]) -> None:
    """Atomically create ``path`` with ``writer(temporary_path)`` (for libraries that write by name)."""
    with _atomic_path(path) as tmp:
        writer(tmp)


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` made atomic (for training state: optimiser, scheduler, RNG)."""
    import torch  # here: the io helpers serve the CLI's parser too, which imports no torch

    atomic_via(path, lambda tmp: torch.save(obj, tmp))


def check_apart(out: str | Path, source: str | Path, what: str = "--out") -> None:
    """A one-line ValueError when the output folder ``out`` is, contains or lies inside ``source`` (a file or a
    folder): replacing ``out`` must never remove what it is made from (a run and its sibling runs)."""
    o, s = Path(out).expanduser().resolve(), Path(source).expanduser().resolve()
    if o == s or s.is_relative_to(o) or o.is_relative_to(s):
        rel = "is" if o == s else "contains" if s.is_relative_to(o) else "lies inside"
        raise ValueError(f"{what} {out} {rel} the source {source}: pvt never replaces a folder its source is part "
                         f"of; choose another {what} outside it")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _sync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` (``.<name>-<random>-tmp``: no file suffix); once the
    body has filled it, it becomes ``path`` in one swap and the previous folder at ``path`` (if any) is
    removed. An exception (an interruption, a full disk) anywhere in the body removes the temporary folder
    and leaves ``path`` as it was; a SIGKILL leaves at most that hidden sibling. The caller decides
    beforehand whether ``path`` may be replaced."""
    path = Path(path)
    refuse_link(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", suffix="-tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # a plain mkdir's mode (mkdtemp uses 0o700)
        if not (path.is_dir() and any(path.iterdir())):
            os.replace(tmp, path)  # over an empty folder or none: one rename
            _sync_dir(path.parent)
            return
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        swapped = _exchange(tmp, path)  # then tmp holds the previous folder
    except BaseException:  # (before the swap tmp is the new folder, after it the old one: both may go)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if swapped:
        _sync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # no atomic exchange here: the previous folder moves aside and the new one in (back on failure)
    aside = tmp.with_name(tmp.name + "-old")
    try:
        os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except BaseException:
            if not path.exists():
                os.replace(aside, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def read_json(path: str | Path, expect: type = dict, what: str = "a JSON object") -> Any:
    """The JSON value in ``path``; a one-line ValueError naming the file when it is not valid JSON (or not
    UTF-8) or not of type ``expect`` (``what`` names it in the message)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(value, expect):
        raise ValueError(f"{path}: expected {what}, got a JSON {type(value).__name__}")
    return value


YAML_LIMITS: dict[str, int] = {"bytes": 1 << 20, "depth": 32, "nodes": 100_000}
"""What a YAML text (a ``--config`` file, a run's config.yaml, a command-line value) may hold before it is
built: its size, its nesting and its node count with every alias expanded (an anchor bomb of a few hundred
bytes expands to billions of nodes). A training config is about 60 values, 3 deep."""


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` once its events show it within :data:`YAML_LIMITS` (size, nesting, nodes with
    every alias expanded); a ValueError naming ``source`` and the limit otherwise. The events are read
    without recursion, so neither an anchor bomb nor deep nesting reaches the (recursive) builder."""
    if len(text) > YAML_LIMITS["bytes"]:
        raise ValueError(f"{source}: {len(text)} characters of YAML, more than the {YAML_LIMITS['bytes']} allowed")
    sizes: dict[str, int] = {}  # anchor -> nodes it expands to
    stack: list[list[Any]] = []  # open collections: [anchor, nodes so far]
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) > YAML_LIMITS["depth"]:
                raise ValueError(f"{source}: YAML nested more than {YAML_LIMITS['depth']} levels deep")
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, n = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:  # an alias inside its own anchor: a structure that contains itself
                raise ValueError(f"{source}: YAML alias *{event.anchor} refers to a collection that contains it")
            anchor, n = None, sizes[event.anchor]
        else:
            continue
        if anchor is not None:
            sizes[anchor] = n
        if stack:
            stack[-1][1] += n
        else:
            total += n
        if (stack[0][1] if stack else total) > YAML_LIMITS["nodes"]:
            raise ValueError(f"{source}: YAML of more than {YAML_LIMITS['nodes']} values once its aliases "
                             "(*name) are expanded")
    return yaml.safe_load(text)


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The YAML mapping in ``path``, read with :func:`safe_yaml`'s bounds (its size checked before it is
    read). FileNotFoundError when it is missing; a one-line ValueError naming ``what`` and the file when it
    is too large, not UTF-8, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.stat().st_size > YAML_LIMITS["bytes"]:
        raise ValueError(f"{what} {str(path)!r} is {path.stat().st_size} bytes, more than the "
                         f"{YAML_LIMITS['bytes']} a config may have")
    try:
        data = safe_yaml(path.read_text(), f"{what} {str(path)!r}") or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def load_torch(path: str | Path, kind: str = "PyTorch file", unsafe_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line ValueErrors naming the file (``kind``
    names what it should be): empty, not a PyTorch file, refused as unsafe because it holds Python objects
    (nothing from a file is executed; ``unsafe_hint`` is appended to that message), corrupt or truncated."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if not magic:
        raise ValueError(f"{path} is empty (0 bytes): not a {kind}")
    if magic != b"PK" and magic[:1] != b"\x80":  # a torch zip archive / a legacy pickle
        raise ValueError(f"{path} is not a {kind}: neither a zip archive nor a pickle (it starts with bytes {magic!r})")
    if magic == b"PK":
        _check_zip_sizes(path, kind)
    import torch

    try:
        with warnings.catch_warnings():  # its note on unusual pickle protocols is no concern of the user's
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch 2.14: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked";
        # earlier: "Unsupported global: GLOBAL x.y"
        if m := re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", str(e)):
            raise ValueError(
                f"{path} was refused as unsafe: it holds Python objects besides tensors ({m[1]}), which "
                f"torch.load(weights_only=True) refuses to build: nothing from a file is executed here{unsafe_hint}"
            ) from None
        if m := re.search(r"Unsupported operand (\d+)", str(e)):
            raise ValueError(
                f"{path} was refused as unsafe: its pickle uses an instruction (opcode {m[1]}) that "
                f"torch.load(weights_only=True) does not run: nothing from a file is executed here{unsafe_hint}"
            ) from None
        raise ValueError(f"{path} is not a readable {kind} (corrupt or truncated?)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError, TypeError,
            IndexError, KeyError, MemoryError, OverflowError) as e:
        msg = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable {kind} (corrupt or truncated?): {msg}") from None


def _check_zip_sizes(path: Path, kind: str) -> None:
    """A ValueError when the zip archive ``path`` would expand to much more than its own size: torch.save
    stores tensors uncompressed, so members that inflate (a 1 MB DEFLATE member holding 1 GiB of zeros)
    are a crafted file, refused from the central directory before torch.load reads any member. A zip that
    cannot be opened is left to torch.load, whose error is reported as for any corrupt file."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    total = sum(m.file_size for m in members)
    if total > 2 * size + (1 << 20):
        big = max(members, key=lambda m: m.file_size)
        raise ValueError(f"{path} is not a {kind} this library reads: its zip members expand to {total} bytes, "
                         f"{total / max(size, 1):.0f} times the file's {size} (e.g. {big.filename!r}: {big.file_size} "
                         f"bytes from {big.compress_size}); torch.save stores tensors uncompressed")


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that writers killed mid-write left in
    ``folder``; returns what was removed. Only call it when no writer is active there."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed
