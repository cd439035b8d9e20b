"""Reading checkpoints from disk: files, containers and folders, in every supported ecosystem.

Nothing from a file is ever executed: ``.pth`` / ``.pt`` / ``.bin`` files are read with
``torch.load(weights_only=True)`` and ``.safetensors`` files hold only tensors and strings.

Accepted inputs:

* a single file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt``; the content decides, not
  the suffix) holding a state dict, possibly wrapped as ``{"model": sd}``, ``{"state_dict": sd}``,
  ``{"model_state_dict": sd}`` and/or with ``module.`` prefixes;
* this library's own format (one ``.safetensors`` file whose metadata holds its config);
* an HF transformers folder: ``config.json`` (``model_type`` ``pvt_v2`` or ``pvt``) and
  ``model.safetensors`` or ``pytorch_model.bin`` (or a sharded ``*.index.json``);
* a timm hub folder: ``config.json`` with an ``architecture`` and ``model.safetensors`` or
  ``pytorch_model.bin``;
* a folder holding exactly one weight file;
* a dense-prediction checkpoint (mmdetection / mmsegmentation, e.g. the official PVT detection and
  segmentation releases, usually ``{"state_dict": sd, "meta": ...}``): the backbone is taken from
  under its ``backbone.`` prefix and the neck and head tensors are dropped, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..base.io import read_json
from ..models.config import PVTConfig
from .checkpoint import check_file_limits, is_safetensors, read_own_format
from .hf_config import hf_config_to_pvt
from .keys import FORMATS, StateDict, detect_key_format, split_backbone, strip_wrappers, to_pvt

__all__ = ["Checkpoint", "read_checkpoint", "read_state_dict"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_state")


@dataclass
class Checkpoint:
    """A checkpoint read from disk, its tensors already renamed to this library's keys."""

    state_dict: StateDict
    format: str
    """Key of :data:`pvt.weights.keys.FORMATS` the file was written in."""
    source: str
    """The file or folder it came from (for messages)."""
    config: PVTConfig | None = None
    """The architecture the checkpoint describes itself (own format, HF ``config.json``)."""
    variant: str | None = None
    """The variant name recorded in the checkpoint, when it records one."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Own-format metadata beyond the config (e.g. class names)."""
    notes: list[str] = field(default_factory=list)
    """One-line notes for the user about what reading it changed (e.g. a dense-prediction file's
    neck and heads dropped); the loaders pass them on as warnings."""

    @property
    def format_description(self) -> str:
        return FORMATS.get(self.format, self.format)


# --------------------------------------------------------------------------- single files
def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors that name the file."""
    from ..base.io import load_torch

    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # a torch zip archive / a legacy pickle
        raise ValueError(
            f"{path} is not a checkpoint: neither a PyTorch file (zip archive or pickle) nor a safetensors "
            f"file (it starts with bytes {magic!r})"
        )
    return load_torch(path, "PyTorch checkpoint", unsafe_hint=(
        ". Load it in code you trust and re-save only the state dict, e.g. torch.save(ckpt['model'], 'weights.pth')"))


def _unwrap(obj: Any, path: Path) -> StateDict:
    """Find the state dict in a loaded object: the dict itself or one of its container entries."""
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)"
        )
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and any(isinstance(v, Tensor) for v in inner.values()):
            return _unwrap(inner, path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise ValueError(
            f"{path} holds no tensors: a dict with keys [{keys}]; expected a state dict, "
            f"possibly under one of {list(_CONTAINER_KEYS)}"
        )
    return tensors


def read_state_dict(path: str | Path) -> tuple[StateDict, dict[str, Any] | None]:
    """``(state_dict, own_format_metadata_or_None)`` of one file, unwrapped and without ``module.``
    prefixes, in the file's own key names."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint")
    if is_safetensors(path):
        own = read_own_format(path)
        if own is not None:
            return own[0], own[1]
        from safetensors.torch import load_file

        try:
            return strip_wrappers(load_file(str(path))), None
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    return strip_wrappers(_unwrap(_torch_load(path), path)), None


def _one_copy(sd: StateDict) -> StateDict:
    """An OpenMMLab file written by ``pvt convert --to mmdet`` holds each backbone tensor twice, under
    ``backbone.`` and bare (see :func:`pvt.weights.writing._mm_state_dict`): keep the ``backbone.`` copy.
    Any other state dict is returned as it is."""
    bare = [k for k in sd if not k.startswith("backbone.")]
    if not bare or len(bare) == len(sd):
        return sd
    for k in bare:
        twin = sd.get(f"backbone.{k}")
        if twin is None or (twin is not sd[k] and (twin.shape != sd[k].shape or not torch.equal(twin, sd[k]))):
            return sd
    return {k: v for k, v in sd.items() if k.startswith("backbone.")}


def _from_state_dict(sd: StateDict, source: str) -> tuple[StateDict, str, list[str]]:
    """``(tensors in this library's names, format, notes)``; a dense-prediction file gives its backbone."""
    sd = _one_copy(sd)
    fmt = detect_key_format(sd)
    notes: list[str] = []
    if fmt is None and (split := split_backbone(sd)) is not None:
        inner, prefix, dropped = split
        fmt = detect_key_format(inner)
        groups = ", ".join(f"{g}.* ({n})" for g, n in sorted(dropped.items(), key=lambda gn: (-gn[1], gn[0])))
        notes.append(
            f"checkpoint {source} is a dense-prediction checkpoint: took the {len(inner)} backbone tensors under "
            f"'{prefix}'" + (f" and dropped the other {sum(dropped.values())} ({groups})" if groups else "")
        )
        sd = inner
    if fmt is None:
        names = ", ".join(list(sd)[:5])
        raise ValueError(
            f"{source} is not a PVT checkpoint: none of its {len(sd)} tensor names ({names}, ...) follows "
            f"a known layout; accepted: {'; '.join(FORMATS.values())}, or a detection / segmentation "
            "checkpoint holding one of them under 'backbone.'"
        )
    return to_pvt(sd, fmt), fmt, notes


def _read_file(path: Path) -> Checkpoint:
    sd, meta = read_state_dict(path)
    if meta is not None:  # own format
        config = None
        if isinstance(meta.get("config"), dict):
            try:
                config = PVTConfig.from_dict(meta["config"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: its metadata holds an invalid PVT config: {e}") from None
        extra = {k: v for k, v in meta.items() if k not in ("format", "config", "variant")}
        notes: list[str] = []
        if detect_key_format(sd) is None:  # a detector or segmenter written by pvt train: its backbone
            sd, _, notes = _from_state_dict(sd, str(path))
        return Checkpoint(sd, "pvt", str(path), config, meta.get("variant"), extra, notes)
    converted, fmt, notes = _from_state_dict(sd, str(path))
    return Checkpoint(converted, fmt, str(path), notes=notes)


# --------------------------------------------------------------------------- HF / timm folders
def _weights_in(folder: Path) -> list[Path]:
    """The weight files of an HF-style folder, in the order HF prefers them."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{folder / index} is not a valid shard index: its weight_map is not an object "
                                 "of tensor name: file name")
            shards = set(weight_map.values())
            # plain file names in this folder, opened as files: never a path that leaves it
            bad = [s for s in shards if not isinstance(s, str) or s in ("", ".", "..") or "/" in s or "\\" in s
                   or "\0" in s or not s.endswith(WEIGHT_SUFFIXES)]
            if bad:
                raise ValueError(f"{folder / index}: its weight_map names {bad[0]!r}: expected the file name of a "
                                 f"weight file in the same folder ({', '.join(WEIGHT_SUFFIXES)})")
            return [folder / s for s in sorted(shards)]
    return []


def _read_folder(folder: Path) -> Checkpoint:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(files) == 1:
            return _read_file(files[0])
        found = ", ".join(p.name for p in files) or "no weight file"
        raise ValueError(
            f"{folder} is not a checkpoint folder: it has no config.json and {found}; pass a file, an HF "
            "folder (config.json + model.safetensors or pytorch_model.bin) or a folder with one weight file"
        )
    cfg = read_json(cfg_path)
    weights = _weights_in(folder)
    if not weights:
        raise ValueError(
            f"{folder} has a config.json but no model.safetensors or pytorch_model.bin (found: "
            f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})"
        )
    sd: StateDict = {}
    for w in weights:
        part, _ = read_state_dict(w)
        sd.update(part)
    source = str(folder)
    if "model_type" in cfg:  # HF transformers
        cfg, of_backbone = _hf_pvt_config(cfg)
        config = hf_config_to_pvt(cfg, str(cfg_path))
        check_file_limits(config, cfg_path)  # e.g. its image_size sizes v1's resized position embeddings
        notes: list[str] = []
        if of_backbone:
            sd, note = _hf_backbone_tensors(sd, cfg["model_type"], source)
            notes.append(note)
        converted, fmt, _ = _from_state_dict(sd, source)
        want = "hf_v2" if cfg["model_type"] == "pvt_v2" else "hf_v1"
        if fmt != want:
            raise ValueError(f"{source}: config.json says model_type {cfg['model_type']!r} but the weights are in "
                             f"the {FORMATS[fmt]} layout")
        return Checkpoint(converted, fmt, source, config, notes=notes)
    if "architecture" in cfg:  # timm hub folder
        arch = str(cfg["architecture"]).split(".")[0]
        converted, fmt, notes = _from_state_dict(sd, source)
        return Checkpoint(converted, fmt, source, None, arch, notes=notes)
    raise ValueError(
        f"{cfg_path} is neither an HF transformers config (no 'model_type') nor a timm config (no 'architecture')"
    )


def _hf_pvt_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(the PVT config, whether it is a backbone's)`` of an HF ``config.json``: the config itself for
    ``pvt`` / ``pvt_v2`` models; for another model with a PVT ``backbone_config`` (a detector saved with
    ``save_pretrained``, e.g. ``DeformableDetrConfig(backbone_config=PvtV2Config(...))``, whose weights
    keep the backbone under ``model.backbone.model.``) the backbone's."""
    inner = cfg.get("backbone_config")
    if cfg.get("model_type") not in ("pvt", "pvt_v2") and isinstance(inner, dict) and \
            inner.get("model_type") in ("pvt", "pvt_v2"):
        return inner, True
    return cfg, False


def _hf_backbone_tensors(sd: StateDict, kind: str, source: str) -> tuple[StateDict, str]:
    """The tensors of the one PVT backbone in an HF model's state dict, without their prefix (wherever
    the model keeps it: ``model.backbone.conv_encoder.model.`` in a saved Deformable DETR), and the note
    saying what was dropped. A ValueError when there is not exactly one."""
    marker = ("encoder.layers.0.patch_embedding.proj.weight" if kind == "pvt_v2"
              else "encoder.patch_embeddings.0.projection.weight")
    prefixes = sorted({k[: -len(marker)] for k in sd if k.endswith(marker)})
    if len(prefixes) != 1:
        raise ValueError(f"{source}: its config.json names a {kind} backbone, but its weights hold "
                         f"{len(prefixes)} ({', '.join(repr(p) for p in prefixes) or 'no ...' + marker})")
    prefix = prefixes[0]
    inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return inner, (f"checkpoint {source} is a model with a {kind} backbone: took the {len(inner)} backbone tensors "
                   f"under '{prefix}' and dropped the other {len(sd) - len(inner)}")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a file or folder in any supported format (see module doc) into a :class:`Checkpoint`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _read_folder(path) if path.is_dir() else _read_file(path)
