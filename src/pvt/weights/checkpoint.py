"""This library's checkpoints: one ``.safetensors`` file whose metadata describes the model, written
and read in one place (which file of a run folder to read: :mod:`pvt.weights.run_folder`).

Metadata keys: ``format`` (``"pvt"``), ``variant``, ``config`` (the :class:`~pvt.models.config.PVTConfig` as
JSON), and whatever a trainer adds (``task``, ``class_names``, ``train_config``, ``epoch``, ...), each as JSON.

A file is checked before anything is built from it: shapes first, build second. Its config must stay within
:data:`FILE_LIMITS`, and build exactly the tensors its header lists (compared on a skeleton model on the meta
device, which allocates no tensor memory), so a crafted config cannot make a reader allocate more than the
file itself holds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..base.constants import FILE_LIMITS, INTERPOLATIONS, MAX_IMG_SIZE
from ..base.io import atomic_via
from ..models.config import PVTConfig
from ..models.model import PyramidVisionTransformer
from .preprocessing import Preprocessing

__all__ = ["OWN_FORMAT", "FILE_LIMITS", "save_model", "is_safetensors", "read_metadata", "read_header",
           "read_own_format", "check_metadata", "check_file_limits", "check_file_config", "build_pvt", "load_pvt"]

OWN_FORMAT = "pvt"



def save_model(
    model: torch.nn.Module,
    path: str | Path,
    *,
    variant: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a PVT or any module with a ``config`` that has ``to_dict``) in the own format.

    Metadata keys: ``format`` ("pvt"), ``variant``, ``config`` (JSON), plus ``extra`` values as JSON.
    """
    from safetensors.torch import save_file

    meta = {"format": OWN_FORMAT}
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        meta["config"] = json.dumps(cfg.to_dict())
    variant = variant or getattr(model, "variant_name", None)
    if variant:
        meta["variant"] = variant
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_via(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The metadata of an own-format file (only its header is read), JSON values decoded; ``None`` when
    ``path`` is not a file in this library's format. A ValueError for values nested too deeply to decode."""
    header = read_header(path)
    return None if header is None else header[0]


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]] | None:
    """``(metadata, {tensor name: shape})`` of an own-format file, from its header alone (no tensor is
    read); ``None`` when ``path`` is not a file in this library's format."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != OWN_FORMAT:
                return None
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        if not is_safetensors(path):
            return None
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): "
                         f"{' '.join(str(e).split())[:160]}") from None
    decoded: dict[str, Any] = {}
    for k, v in meta.items():
        if k in ("format", "variant"):
            decoded[k] = v
        else:
            try:
                decoded[k] = json.loads(v)
            except json.JSONDecodeError:
                decoded[k] = v
            except RecursionError:
                raise ValueError(f"checkpoint {str(path)!r}: its metadata value {k!r} is nested too deeply to "
                                 "be a pvt record") from None
    check_metadata(decoded, path)
    return decoded, shapes


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# the values a pvt file's metadata may record besides its config, each with what is accepted
_META_CHECKS: dict[str, tuple[Any, str]] = {
    "config": (lambda v: isinstance(v, dict), "a JSON object (the PVT config)"),
    "variant": (lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a model name"),
    "task": (lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a task name"),
    "class_names": (lambda v: isinstance(v, list) and 0 < len(v) <= FILE_LIMITS["num_classes"]
                    and all(isinstance(n, str) for n in v), "a list of names"),
    "img_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= MAX_IMG_SIZE,
                 f"an integer 16..{MAX_IMG_SIZE}"),
    "crop_pct": (lambda v: _number(v) and 0.1 <= v <= 1.0, "a number 0.1..1"),
    "interpolation": (lambda v: v in INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}"),
    "mean": (lambda v: isinstance(v, list) and len(v) == 3 and all(_number(x) and 0 <= x <= 1 for x in v),
             "three numbers 0..1 (the RGB mean of inputs in [0, 1])"),
    "std": (lambda v: isinstance(v, list) and len(v) == 3 and all(_number(x) and 1e-3 <= x <= 1 for x in v),
            "three numbers 0.001..1 (the RGB standard deviation of inputs in [0, 1])"),
    "epoch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10**9, "an integer >= 0"),
    "train_config": (lambda v: isinstance(v, dict), "a JSON object (the training config)"),
}


def check_metadata(meta: dict[str, Any], source: str | Path) -> None:
    """A one-line ValueError naming ``source`` and the field unless every value ``meta`` (an own-format
    file's decoded metadata) records is of its type and range: the model name (a registered variant or
    dense-prediction model), the class names, the evaluation input (``img_size``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``), the epoch, and the config (:class:`PVTConfig`'s own checks, finite
    numbers included, and :data:`FILE_LIMITS`). Every reader of a pvt file goes through it (:func:`read_header`)."""
    where = f"checkpoint {str(source)!r}"
    for key, (ok, accepted) in _META_CHECKS.items():
        if key in meta and not ok(meta[key]):
            shown = repr(meta[key])
            shown = shown[:80] + "..." if len(shown) > 80 else shown
            raise ValueError(f"{where}: its metadata value {key}={shown}: expected {accepted}")
        if key == "config" and key in meta:  # the architecture first, then what it is evaluated on
            check_file_limits(_file_config(meta, source), source)
    name = meta.get("variant")
    if name is not None:
        from ..models.variants import VARIANTS

        if name not in VARIANTS:
            from ..base.naming import unknown_name
            from ..dense.zoo import DENSE_MODELS, get_dense_spec

            try:
                get_dense_spec(name)
            except ValueError:
                known = unknown_name("model", name, [*VARIANTS, *DENSE_MODELS],
                                     "accepted: a registered variant (pvt models) or dense-prediction model")
                raise ValueError(f"{where}: its metadata names an {known}") from None


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` begins as a safetensors file does (an 8-byte header length, then ``{``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def check_file_limits(cfg: PVTConfig, source: str | Path) -> None:
    """A ValueError unless ``cfg``, read from the file ``source``, is within :data:`FILE_LIMITS`."""
    sizes = {"num_stages": [cfg.num_stages], "img_size": [cfg.img_size], "in_chans": [cfg.in_chans],
             "num_classes": [cfg.num_classes], "pool_size": [cfg.pool_size]}
    for name, limit in FILE_LIMITS.items():
        values = sizes.get(name, getattr(cfg, name, ()))
        if any(v > limit for v in values):
            raise ValueError(f"checkpoint {str(source)!r}: its config asks for {name} "
                             f"{list(values) if len(values) > 1 else values[0]}, beyond the {limit} a pvt model may "
                             "have; the file is not a model this library wrote")


def check_file_config(cfg: PVTConfig, shapes: dict[str, tuple[int, ...]], source: str | Path) -> None:
    """A ValueError unless ``cfg`` (read from the file ``source``) is within :data:`FILE_LIMITS` and builds
    exactly the tensors ``shapes`` lists. The stages and blocks are counted first, so the skeleton built
    to compare every shape is no larger than the file."""
    where = f"checkpoint {str(source)!r}"
    check_file_limits(cfg, source)
    stages = {int(m[1]) for k in shapes if (m := re.match(r"stages\.(\d+)\.", k))}
    blocks = [len({int(m[1]) for k in shapes if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))})
              for i in range(cfg.num_stages)]
    if stages != set(range(cfg.num_stages)) or tuple(blocks) != cfg.depths:
        raise ValueError(f"{where}: its config describes depths {list(cfg.depths)} but its tensors hold "
                         f"{len(stages)} stages with {blocks[:len(stages)]} blocks")
    with torch.device("meta"):
        skeleton = PyramidVisionTransformer(cfg)
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    wrong = [f"{k} {list(shapes[k])} vs {list(v)}" for k, v in want.items() if k in shapes and shapes[k] != v]
    missing = [k for k in want if k not in shapes]
    extra = [k for k in shapes if k not in want]
    if wrong or missing or extra:
        parts = [f"{len(wrong)} of another shape (file vs config), e.g. {wrong[0]}" if wrong else "",
                 f"{len(missing)} missing, e.g. {missing[0]}" if missing else "",
                 f"{len(extra)} unexpected, e.g. {extra[0]}" if extra else ""]
        raise ValueError(f"{where}: its tensors do not match its own config: {'; '.join(p for p in parts if p)}")


def _file_config(meta: dict[str, Any], source: str | Path) -> PVTConfig:
    try:
        return PVTConfig.from_dict(meta["config"])
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"checkpoint {str(source)!r}: its metadata holds an invalid PVT config: {e}") from None


def read_own_format(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(state_dict, metadata)`` if ``path`` is an own-format file, else ``None`` (see :func:`read_metadata`).

    A PVT's recorded config is checked against the header (:func:`check_file_config`) before any tensor
    is read; a ValueError names what does not fit."""
    from safetensors.torch import load_file

    header = read_header(path)
    if header is None:
        return None
    meta, shapes = header
    if isinstance(meta.get("config"), dict) and any(k.startswith("stages.") for k in shapes):
        check_file_config(_file_config(meta, path), shapes, path)
    try:
        return load_file(str(path)), meta
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): "
                         f"{' '.join(str(e).split())[:160]}") from None


def build_pvt(meta: dict[str, Any], state: dict[str, torch.Tensor], source: str | Path) -> PyramidVisionTransformer:
    """The :class:`PyramidVisionTransformer` an own-format file describes: built from the config it
    records, with its tensors loaded (a ValueError when the file records no config or the tensors do not
    fit it) and the evaluation input it records in ``pretrained_cfg``. The training-time rates (dropout,
    stochastic depth) are switched off."""
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"checkpoint {str(source)!r} records no PVT config (it was not written by pvt)")
    cfg = _file_config(meta, source)
    check_file_config(cfg, {k: tuple(v.shape) for k, v in state.items()}, source)  # before the real build
    model = PyramidVisionTransformer(cfg.replace(drop_path_rate=0.0, drop_rate=0.0, attn_drop_rate=0.0))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(source)!r} does not match its own config: {str(e).splitlines()[0]}") from None
    if isinstance(meta.get("variant"), str):
        model.variant_name = meta["variant"]
    return Preprocessing.of(cfg, meta).apply_to(model)  # its evaluation transform, in model.pretrained_cfg


def load_pvt(path: str | Path) -> tuple[PyramidVisionTransformer, dict[str, Any]]:
    """``(model, metadata)`` of an own-format PVT file (a run folder's:
    :func:`pvt.weights.run_folder.resolve_checkpoint`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    own = read_own_format(path)
    if own is None:
        raise ValueError(f"checkpoint {str(path)!r} is not in this library's format (a .safetensors file with "
                         "format=pvt metadata); convert it with `pvt convert`")
    state, meta = own
    return build_pvt(meta, state, path), meta
