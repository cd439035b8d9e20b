"""Pure state-dict conversions between the PVT ecosystems' key names (no model needed).

Every function maps ``{name: tensor} -> {name: tensor}``; tensors are passed through (or, for the
HF formats, split or concatenated along dim 0) and never copied otherwise. Keys a rule does not
know pass through unchanged, so that the loader can report them as unexpected.

Formats (``detect_key_format``):

* ``pvt``: this library: ``stages.{i}.patch_embed.*``, ``stages.{i}.pos_embed``,
  ``stages.{i}.cls_token``, ``stages.{i}.blocks.{j}.*``, ``stages.{i}.norm``, ``head``.
* ``official``: whai362/PVT classification code, v1 and v2: ``patch_embed{i}``, ``pos_embed{i}``,
  ``cls_token``, ``block{i}.{j}`` (``mlp.dwconv.dwconv``), ``norm{i}`` (v2) or ``norm`` (v1), ``head``
  (stages counted from 1).
* ``timm``: ``patch_embed`` (stage 0), ``stages.{i}.downsample`` (stages 1..3), ``stages.{i}.blocks``,
  ``stages.{i}.norm``, ``head``.
* ``hf_v2``: transformers ``PvtV2Model`` / ``PvtV2ForImageClassification`` (prefix ``pvt_v2.``).
* ``hf_v1``: transformers ``PvtModel`` / ``PvtForImageClassification`` (prefix ``pvt.``).

In the HF formats attention keeps ``key`` and ``value`` apart; the other formats hold one ``kv``
linear layer whose first ``C`` output rows are the keys and the last ``C`` the values.
"""

from __future__ import annotations

import re
from typing import Callable

from torch import Tensor

__all__ = [
    "FORMATS",
    "StateDict",
    "detect_key_format",
    "split_backbone",
    "strip_wrappers",
    "to_pvt",
    "from_official",
    "to_official",
    "from_timm",
    "to_timm",
    "from_hf_v2",
    "to_hf_v2",
    "from_hf_v1",
    "to_hf_v1",
]

StateDict = dict[str, Tensor]

FORMATS: dict[str, str] = {
    "pvt": "this library's own names",
    "official": "whai362/PVT classification checkpoint (v1 or v2 names)",
    "timm": "timm pvt_v2_* state dict",
    "hf_v2": "HF transformers PvtV2Model / PvtV2ForImageClassification",
    "hf_v1": "HF transformers PvtModel / PvtForImageClassification",
}

# wrappers added by training code: DistributedDataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrappers(sd: StateDict) -> StateDict:
    """Remove ``module.`` / ``_orig_mod.`` prefixes shared by every key (DDP, ``torch.compile``)."""
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def detect_key_format(sd: StateDict) -> str | None:
    """The format whose signature keys ``sd`` holds (see module doc), or ``None``."""
    keys = set(sd)
    if any(k.startswith("stages.0.patch_embed.") for k in keys):
        return "pvt"
    if any(re.match(r"(pvt_v2\.)?encoder\.layers\.\d+\.", k) for k in keys):
        return "hf_v2"
    if any(re.match(r"(pvt\.)?encoder\.(patch_embeddings|block)\.\d+\.", k) for k in keys):
        return "hf_v1"
    if any(re.match(r"(patch_embed|block|pos_embed)\d+[.]?", k) for k in keys):
        return "official"
    if any(k.startswith("patch_embed.") for k in keys) and any(k.startswith("stages.") for k in keys):
        return "timm"
    return None


def split_backbone(sd: StateDict) -> tuple[StateDict, str, dict[str, int]] | None:
    """The backbone of a dense-prediction state dict (mmdetection / mmsegmentation, as the official
    detection and segmentation releases save them, or a model of this library's ``pvt.tasks``).

    Such files keep the backbone under a prefix (``backbone.``; ``backbone.body.body.`` in this
    library's task models) beside ``neck.``, ``bbox_head.``, ``decode_head.`` and so on. Returns
    ``(backbone tensors with the prefix removed, prefix, {first name component: count} of the other
    tensors)``, or ``None`` when no prefix of up to three components holds a known layout. Shorter
    prefixes are tried first, and among equally long ones those starting with ``backbone``.
    """
    counts: dict[str, int] = {}
    for k in sd:
        parts = k.split(".")
        for n in range(1, min(4, len(parts))):
            p = ".".join(parts[:n]) + "."
            counts[p] = counts.get(p, 0) + 1
    order = sorted(counts, key=lambda p: (p.count("."), not p.startswith("backbone."), -counts[p], p))
    for prefix in order:
        inner = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if detect_key_format(inner) is None:
            continue
        dropped: dict[str, int] = {}
        for k in sd:
            if not k.startswith(prefix):
                parts = k.split(".")
                # name the group by its first component, or by enough of them to tell it from the
                # backbone (``backbone.fpn`` beside ``backbone.body.body.``)
                n = 1
                while n < len(parts) and prefix.startswith(".".join(parts[:n]) + "."):
                    n += 1
                group = ".".join(parts[:n])
                dropped[group] = dropped.get(group, 0) + 1
        return inner, prefix, dropped
    return None


def _rename(sd: StateDict, rules: list[tuple[str, str | Callable[[re.Match], str]]]) -> StateDict:
    """Apply the first matching ``(pattern, replacement)`` of ``rules`` to every key."""
    out: StateDict = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, k, count=1)
            if n:
                k = new
                break
        out[k] = v
    return out


def _max_index(sd: StateDict, pattern: str) -> int:
    """Largest integer captured by ``pattern``'s first group over the keys (-1 if none)."""
    return max((int(m.group(1)) for k in sd if (m := re.match(pattern, k))), default=-1)


# --------------------------------------------------------------------------- official (whai362/PVT)
def from_official(sd: StateDict) -> StateDict:
    """Official v1/v2 names -> this library's names."""
    last = _max_index(sd, r"patch_embed(\d+)\.") - 1  # official stages count from 1
    out = _rename(
        sd,
        [
            (r"^patch_embed(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.patch_embed."),
            (r"^pos_embed(\d+)$", lambda m: f"stages.{int(m[1]) - 1}.pos_embed"),
            (r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
            (r"^norm(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.norm."),
            (r"^norm\.", f"stages.{last}.norm."),
            (r"^cls_token$", f"stages.{last}.cls_token"),
        ],
    )
    return {k.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv."): v for k, v in out.items()}


def to_official(sd: StateDict) -> StateDict:
    """This library's names -> official names (v1 names when the model has a class token: one final
    ``norm``; else v2 names ``norm1..4``)."""
    last = _max_index(sd, r"stages\.(\d+)\.")
    normed = {int(m[1]) for k in sd if (m := re.match(r"stages\.(\d+)\.norm\.", k))}
    single_norm = normed == {last} and last > 0
    rules: list[tuple[str, str | Callable[[re.Match], str]]] = [
        (r"^stages\.(\d+)\.patch_embed\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
        (r"^stages\.(\d+)\.pos_embed$", lambda m: f"pos_embed{int(m[1]) + 1}"),
        (r"^stages\.(\d+)\.cls_token$", "cls_token"),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
        (r"^stages\.(\d+)\.norm\.", (lambda m: "norm.") if single_norm else (lambda m: f"norm{int(m[1]) + 1}.")),
    ]
    out = _rename(sd, rules)
    return {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in out.items()}


# --------------------------------------------------------------------------- timm
def from_timm(sd: StateDict) -> StateDict:
    """timm ``pvt_v2_*`` names -> this library's names (only the patch embeddings move)."""
    return _rename(
        sd,
        [
            (r"^patch_embed\.", "stages.0.patch_embed."),
            (r"^stages\.(\d+)\.downsample\.", lambda m: f"stages.{m[1]}.patch_embed."),
        ],
    )


def to_timm(sd: StateDict) -> StateDict:
    """This library's v2 names -> timm's."""
    return _rename(
        sd,
        [
            (r"^stages\.0\.patch_embed\.", "patch_embed."),
            (r"^stages\.(\d+)\.patch_embed\.", lambda m: f"stages.{m[1]}.downsample."),
        ],
    )


# --------------------------------------------------------------------------- HF transformers
def _merge_kv(sd: StateDict, key_pat: str, value_pat: str, kv_name: str) -> StateDict:
    """Concatenate the separate ``key`` / ``value`` linear layers (HF) into one ``kv`` (rows: k then v).

    ``key_pat`` / ``value_pat`` are suffixes like ``.attention.key.``; a key without its value (or
    the reverse) is left as it is.
    """
    out: StateDict = {}
    for k, v in sd.items():
        if key_pat in k:
            partner = k.replace(key_pat, value_pat)
            if partner in sd:
                out[k.replace(key_pat, kv_name)] = _cat(v, sd[partner])
                continue
        elif value_pat in k and k.replace(value_pat, key_pat) in sd:
            continue
        out[k] = v
    return out


def _cat(a: Tensor, b: Tensor) -> Tensor:
    import torch

    return torch.cat([a, b], dim=0)


def _split_kv(sd: StateDict, key_name: str, value_name: str) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if ".attn.kv." in k:
            c = v.shape[0] // 2
            out[k.replace(".attn.kv.", key_name)] = v[:c]
            out[k.replace(".attn.kv.", value_name)] = v[c:]
        else:
            out[k] = v
    return out


def _strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _rename_block(rest: str, table: list[tuple[str, str]], to_ours: bool) -> str:
    """Rename the leading part of a block key's suffix by ``table`` of ``(theirs, ours)`` pairs.

    Towards their names the fused ``.attn.kv.`` is never renamed: it has been split first."""
    for theirs, ours in table:
        src, dst = (theirs, ours) if to_ours else (ours, theirs)
        if rest.startswith(src) and (to_ours or ours != ".attn.kv."):
            return dst + rest[len(src) :]
    return rest


_HF_V2_BLOCK = [
    (".layer_norm_1.", ".norm1."),
    (".attention.query.", ".attn.q."),
    (".attention.kv.", ".attn.kv."),
    (".attention.spatial_reduction.", ".attn.sr."),
    (".attention.layer_norm.", ".attn.norm."),
    (".attention.proj.", ".attn.proj."),
    (".layer_norm_2.", ".norm2."),
    (".mlp.dense1.", ".mlp.fc1."),
    (".mlp.dwconv.dwconv.", ".mlp.dwconv."),
    (".mlp.dense2.", ".mlp.fc2."),
]


def from_hf_v2(sd: StateDict) -> StateDict:
    """transformers ``PvtV2*`` names -> this library's names (``key``/``value`` merged into ``kv``)."""
    sd = _strip_prefix(sd, "pvt_v2.")
    sd = _merge_kv(sd, ".attention.key.", ".attention.value.", ".attention.kv.")
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)(\..*)$", k):
            rest = _rename_block(m[3], _HF_V2_BLOCK, to_ours=True)
            k = f"stages.{m[1]}.blocks.{m[2]}{rest}"
        elif m := re.match(r"^encoder\.layers\.(\d+)\.patch_embedding\.(proj|layer_norm)\.(.*)$", k):
            k = f"stages.{m[1]}.patch_embed.{'proj' if m[2] == 'proj' else 'norm'}.{m[3]}"
        elif m := re.match(r"^encoder\.layers\.(\d+)\.layer_norm\.(.*)$", k):
            k = f"stages.{m[1]}.norm.{m[2]}"
        elif k.startswith("classifier."):
            k = "head." + k[len("classifier.") :]
        out[k] = v
    return out


def to_hf_v2(sd: StateDict, prefix: str = "pvt_v2.") -> StateDict:
    """This library's v2 names -> ``PvtV2ForImageClassification`` names (``prefix=""``: ``PvtV2Model``)."""
    sd = _split_kv(sd, ".attention.key.", ".attention.value.")
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)(\..*)$", k):
            rest = _rename_block(m[3], _HF_V2_BLOCK, to_ours=False)
            k = f"{prefix}encoder.layers.{m[1]}.blocks.{m[2]}{rest}"
        elif m := re.match(r"^stages\.(\d+)\.patch_embed\.(proj|norm)\.(.*)$", k):
            k = f"{prefix}encoder.layers.{m[1]}.patch_embedding.{'proj' if m[2] == 'proj' else 'layer_norm'}.{m[3]}"
        elif m := re.match(r"^stages\.(\d+)\.norm\.(.*)$", k):
            k = f"{prefix}encoder.layers.{m[1]}.layer_norm.{m[2]}"
        elif k.startswith("head."):
            k = "classifier." + k[len("head.") :]
        out[k] = v
    return out


_HF_V1_BLOCK = [
    (".layer_norm_1.", ".norm1."),
    (".attention.self.query.", ".attn.q."),
    (".attention.self.kv.", ".attn.kv."),
    (".attention.self.sequence_reduction.", ".attn.sr."),
    (".attention.self.layer_norm.", ".attn.norm."),
    (".attention.output.dense.", ".attn.proj."),
    (".layer_norm_2.", ".norm2."),
    (".mlp.dense1.", ".mlp.fc1."),
    (".mlp.dense2.", ".mlp.fc2."),
]
_HF_V1_EMBED = {"projection": "proj", "layer_norm": "norm"}


def from_hf_v1(sd: StateDict) -> StateDict:
    """transformers ``Pvt*`` (PVT v1) names -> this library's names."""
    sd = _strip_prefix(sd, "pvt.")
    sd = _merge_kv(sd, ".attention.self.key.", ".attention.self.value.", ".attention.self.kv.")
    last = _max_index(sd, r"encoder\.patch_embeddings\.(\d+)\.")
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"^encoder\.block\.(\d+)\.(\d+)(\..*)$", k):
            rest = _rename_block(m[3], _HF_V1_BLOCK, to_ours=True)
            k = f"stages.{m[1]}.blocks.{m[2]}{rest}"
        elif m := re.match(r"^encoder\.patch_embeddings\.(\d+)\.(projection|layer_norm)\.(.*)$", k):
            k = f"stages.{m[1]}.patch_embed.{_HF_V1_EMBED[m[2]]}.{m[3]}"
        elif m := re.match(r"^encoder\.patch_embeddings\.(\d+)\.position_embeddings$", k):
            k = f"stages.{m[1]}.pos_embed"
        elif m := re.match(r"^encoder\.patch_embeddings\.(\d+)\.cls_token$", k):
            k = f"stages.{m[1]}.cls_token"
        elif k.startswith("encoder.layer_norm."):
            k = f"stages.{last}.norm." + k[len("encoder.layer_norm.") :]
        elif k.startswith("classifier."):
            k = "head." + k[len("classifier.") :]
        out[k] = v
    return out


def to_hf_v1(sd: StateDict, prefix: str = "pvt.") -> StateDict:
    """This library's v1 names -> ``PvtForImageClassification`` names (``prefix=""``: ``PvtModel``)."""
    sd = _split_kv(sd, ".attention.self.key.", ".attention.self.value.")
    inv_embed = {v: k for k, v in _HF_V1_EMBED.items()}
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)(\..*)$", k):
            rest = _rename_block(m[3], _HF_V1_BLOCK, to_ours=False)
            k = f"{prefix}encoder.block.{m[1]}.{m[2]}{rest}"
        elif m := re.match(r"^stages\.(\d+)\.patch_embed\.(proj|norm)\.(.*)$", k):
            k = f"{prefix}encoder.patch_embeddings.{m[1]}.{inv_embed[m[2]]}.{m[3]}"
        elif m := re.match(r"^stages\.(\d+)\.pos_embed$", k):
            k = f"{prefix}encoder.patch_embeddings.{m[1]}.position_embeddings"
        elif m := re.match(r"^stages\.(\d+)\.cls_token$", k):
            k = f"{prefix}encoder.patch_embeddings.{m[1]}.cls_token"
        elif m := re.match(r"^stages\.(\d+)\.norm\.(.*)$", k):
            k = f"{prefix}encoder.layer_norm.{m[2]}"
        elif k.startswith("head."):
            k = "classifier." + k[len("head.") :]
        out[k] = v
    return out


_TO_PVT: dict[str, Callable[[StateDict], StateDict]] = {
    "pvt": lambda sd: dict(sd),
    "official": from_official,
    "timm": from_timm,
    "hf_v2": from_hf_v2,
    "hf_v1": from_hf_v1,
}


def to_pvt(sd: StateDict, fmt: str) -> StateDict:
    """Convert a state dict in format ``fmt`` (a key of :data:`FORMATS`) to this library's names."""
    try:
        return _TO_PVT[fmt](sd)
    except KeyError:
        raise ValueError(f"unknown weight format {fmt!r}; accepted: {', '.join(FORMATS)}") from None
