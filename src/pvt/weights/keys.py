"""Pure state-dict conversions between the PVT ecosystems' key names (no model needed).

Every format other than this library's own is declared once, as a :class:`Layout`: a table of
:class:`Rule` pairs ``(our name, their name)`` plus the tensor steps (:class:`Fuse`) where the two
sides store a tensor differently. One engine applies a table in either direction: forwards turns
our names into the format's (:func:`from_pvt`, ``to_official`` ...), backwards turns the format's
into ours (:func:`to_pvt`, ``from_official`` ...). No inverse is written by hand, so the two
directions cannot drift apart; another layout is one more table.

Tensors are passed through (or, in a tensor step, split or concatenated along dim 0) and never
copied otherwise. Keys no rule knows pass through unchanged, so that the loader can report them as
unexpected; two keys that would end up with one name are an error rather than a silent loss.

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
* ``mm_v2`` / ``mm_v1``: OpenMMLab's PVT backbones (mmdetection's ``PyramidVisionTransformerV2`` /
  ``PyramidVisionTransformer``, which mmsegmentation configs use too): ``layers.{i}.0`` (patch
  embedding, ``projection``), ``layers.{i}.1.{j}`` (blocks; in v1 ``layers.{i}.1.0`` is the position
  embedding and block ``j`` is ``layers.{i}.1.{j+1}``), ``layers.{i}.2`` (v2's stage norm; v1 has none,
  and no class token or head). Their checkpoints keep the backbone under ``backbone.``
  (:func:`split_backbone`).

In the HF formats attention keeps ``key`` and ``value`` apart; OpenMMLab's ``nn.MultiheadAttention``
holds queries, keys and values as one input projection (``attn.attn.in_proj_weight``: ``q`` rows, then
``kv``'s) and its MLP's linear layers as 1x1 convolutions ``(C_out, C_in, 1, 1)``; the other formats hold
one ``kv`` linear layer whose first ``C`` output rows are the keys and the last ``C`` the values.

How a table reads
-----------------
A rule's two sides are templates: literal text with index fields ``{s}`` (the stage), ``{b}`` (the
block) or any other name, each optionally offset (``{s+1}``: the format counts stages from 1).
Fields must appear on both sides, so that either side determines the other. Two more fields:

* ``{last}``: the last stage, for a name a format gives without a stage number (v1's single final
  ``norm``, its ``cls_token``). Towards our names it is the largest stage index the other keys show;
  towards the format's, a rule with ``stages.{last}.`` applies only where the last stage is the only
  one holding such a key (a v2 model, with a norm in every stage, gets ``norm1..4`` from the next rule).
* ``{prefix}``: the format's optional prefix (``pvt_v2.``), written by default, accepted or absent.

A template ending in ``.`` names a group (the start of its keys; the rest of the key follows it,
renamed by the rule's ``inner`` rules, such as a block's layers); otherwise it names one whole key.
The first rule whose source side matches a key renames it.

Tensor steps work in our naming frame: forwards they run before the renaming, backwards after it
(in reverse order), so their names for the format's side are the format's local names as they stand
once the rules have renamed the key around them (``stages.0.blocks.0.attention.key.weight``); no rule
may rename those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import torch
from torch import Tensor

from .formats import FORMATS

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "Fuse",
    "Layout",
    "PointwiseConv",
    "Rule",
    "StateDict",
    "TensorStep",
    "detect_key_format",
    "split_backbone",
    "strip_wrappers",
    "to_pvt",
    "from_pvt",
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


# --------------------------------------------------------------------------- the engine
_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")
_SPECIAL = ("last", "prefix")  # fields with a meaning of their own (module doc)


def _fields(template: str) -> set[str]:
    return {m[1] for m in _FIELD.finditer(template)}


@lru_cache(maxsize=None)
def _pattern(template: str, prefix: str) -> tuple[re.Pattern[str], tuple[tuple[str, int], ...]]:
    """``template`` as an anchored regular expression with one group per index field, and the
    fields' ``(name, offset)`` in order; ``{prefix}`` matches ``prefix`` or nothing."""
    regex, fields, pos = ["^"], [], 0
    for m in _FIELD.finditer(template):
        regex.append(re.escape(template[pos : m.start()]))
        if m[1] == "prefix":
            regex.append(f"(?:{re.escape(prefix)})?")
        else:
            regex.append("(0|[1-9][0-9]*)")
            fields.append((m[1], int(m[2] or 0)))
        pos = m.end()
    regex.append(re.escape(template[pos:]))
    if not template.endswith("."):
        regex.append("$")  # a whole key
    return re.compile("".join(regex)), tuple(fields)


def _capture(template: str, key: str, prefix: str) -> tuple[dict[str, int], int] | None:
    """The field values ``key`` gives ``template`` and where the rest of ``key`` starts, or ``None``
    when it does not match (a field seen twice must agree; an offset may not make an index negative)."""
    pattern, fields = _pattern(template, prefix)
    m = pattern.match(key)
    if m is None:
        return None
    values: dict[str, int] = {}
    for (name, offset), text in zip(fields, m.groups()):
        value = int(text) - offset
        if value < 0 or values.setdefault(name, value) != value:
            return None
    return values, m.end()


def _fill(template: str, values: dict[str, int], prefix: str) -> str | None:
    """``template`` with its fields filled in; ``None`` if an index would be negative."""
    out, pos = [], 0
    for m in _FIELD.finditer(template):
        out.append(template[pos : m.start()])
        if m[1] == "prefix":
            out.append(prefix)
        else:
            value = values[m[1]] + int(m[2] or 0)
            if value < 0:
                return None
            out.append(str(value))
        pos = m.end()
    out.append(template[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Rule:
    """Our name and the format's for one tensor or group of tensors (see the module doc).

    ``inner`` rules rename the rest of a group's keys (relative names such as ``attn.q.``); the
    first that matches applies, and a rest none matches is kept."""

    ours: str
    theirs: str
    inner: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        ours, theirs = _fields(self.ours), _fields(self.theirs)
        if "prefix" in ours:
            raise ValueError(f"{self}: {{prefix}} belongs to the format's side")
        if ours - {"last"} != theirs - {"last", "prefix"}:
            raise ValueError(f"{self}: both sides need the same index fields ({{last}} aside)")
        if self.ours.endswith(".") != self.theirs.endswith("."):
            raise ValueError(f"{self}: one side names a group (ends in '.'), the other a whole key")
        if self.inner and not self.ours.endswith("."):
            raise ValueError(f"{self}: only a group has inner rules")
        for rule in self.inner:
            if _fields(rule.ours + rule.theirs) & set(_SPECIAL):
                raise ValueError(f"{rule}: {{last}} and {{prefix}} have no meaning in an inner rule")

    def sides(self, forward: bool) -> tuple[str, str]:
        """``(source, target)`` templates: ours -> theirs forwards, theirs -> ours backwards."""
        return (self.ours, self.theirs) if forward else (self.theirs, self.ours)

    def __str__(self) -> str:
        return f"rule ({self.ours!r}, {self.theirs!r})"


class TensorStep(Protocol):
    """A change to the tensors themselves that a layout needs besides renaming (module doc)."""

    def apply(self, sd: StateDict, forward: bool) -> StateDict:
        """Forwards: our storage -> the format's; backwards: the reverse."""
        ...


def _split(sd: StateDict, whole: str, parts: tuple[str, ...], shares: tuple[int, ...]) -> StateDict:
    """Every key with ``whole`` in it becomes one key per part, each taking its share of the rows
    (dim 0), in order; a tensor whose rows do not divide so is kept as it is."""
    out: StateDict = {}
    for k, v in sd.items():
        unit, left = divmod(v.shape[0], sum(shares)) if whole in k and v.ndim else (0, 1)
        if left:
            out[k] = v
            continue
        for part, piece in zip(parts, v.split([unit * n for n in shares])):
            out[k.replace(whole, part, 1)] = piece
    return out


def _merge(sd: StateDict, parts: tuple[str, ...], whole: str) -> StateDict:
    """The inverse of :func:`_split`: the keys that differ only by ``parts`` become one key (rows
    concatenated in the order of ``parts``, at the first part's place); an incomplete group is kept."""
    out: StateDict = {}
    for k, v in sd.items():
        part = next((p for p in parts if p in k), None)
        group = [k.replace(part, p, 1) for p in parts] if part is not None else []
        if not group or not all(g in sd for g in group):
            out[k] = v
        elif k == group[0]:
            out[k.replace(parts[0], whole, 1)] = torch.cat([sd[g] for g in group])
    return out


@dataclass(frozen=True)
class Fuse:
    """A tensor one side stores whole and the other as parts concatenated along dim 0: our ``kv``
    against HF's ``key`` and ``value`` (``Fuse(".attn.kv.", (".attention.key.", ".attention.value."))``),
    or our ``q`` and ``kv`` against one fused input projection (``shares=(1, 2)``).

    ``ours`` / ``theirs`` are infixes of our-frame keys (module doc), one of them a single name;
    ``shares`` are the parts' relative numbers of rows (equal by default)."""

    ours: str | tuple[str, ...]
    theirs: str | tuple[str, ...]
    shares: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        ours = (self.ours,) if isinstance(self.ours, str) else tuple(self.ours)
        theirs = (self.theirs,) if isinstance(self.theirs, str) else tuple(self.theirs)
        parts = max(len(ours), len(theirs))
        if min(len(ours), len(theirs)) != 1 or parts < 2:
            raise ValueError(f"{self}: one side holds one tensor, the other two or more")
        shares = tuple(self.shares) or (1,) * parts
        if len(shares) != parts or min(shares) < 1:
            raise ValueError(f"{self}: one positive share per part")
        object.__setattr__(self, "ours", ours)
        object.__setattr__(self, "theirs", theirs)
        object.__setattr__(self, "shares", shares)

    def apply(self, sd: StateDict, forward: bool) -> StateDict:
        src, dst = (self.ours, self.theirs) if forward else (self.theirs, self.ours)
        return _split(sd, src[0], dst, self.shares) if len(src) == 1 else _merge(sd, src, dst[0])


@dataclass(frozen=True)
class PointwiseConv:
    """Linear weights ``(C_out, C_in)`` that the format stores as 1x1 convolutions ``(C_out, C_in, 1, 1)``
    (OpenMMLab's MLP): the ``weight`` of every key with one of the infixes ``ours`` (our-frame names, as
    in :class:`Fuse`) gains or loses the two unit dimensions (a view, never a copy). A tensor of another
    shape is kept as it is, for the loader to report."""

    ours: tuple[str, ...]

    def apply(self, sd: StateDict, forward: bool) -> StateDict:
        out: StateDict = {}
        for k, v in sd.items():
            if any(k.endswith(infix + "weight") for infix in self.ours):
                if forward and v.ndim == 2:
                    v = v[:, :, None, None]
                elif not forward and v.ndim == 4 and v.shape[2:] == (1, 1):
                    v = v[:, :, 0, 0]
            out[k] = v
        return out


@dataclass(frozen=True)
class _Context:
    """What a conversion knows about the whole state dict before renaming its keys."""

    prefix: str
    last: int = -1
    """The last stage index the source keys show (-1: none)."""
    sole: frozenset[int] = frozenset()
    """Indices of the ``{last}`` rules whose source side matches the last stage only."""


def _context(rules: tuple[Rule, ...], keys: list[str], forward: bool, prefix: str) -> _Context:
    if not any("last" in _fields(r.ours + r.theirs) for r in rules):
        return _Context(prefix)
    stages: set[int] = set()
    seen: dict[int, set[int]] = {}
    for key in keys:
        for i, rule in enumerate(rules):
            hit = _capture(rule.sides(forward)[0], key, prefix)
            if hit is not None:
                stages.update(v for name, v in hit[0].items() if name in ("s", "last"))
                if "last" in hit[0]:
                    seen.setdefault(i, set()).add(hit[0]["last"])
    last = max(stages, default=-1)
    return _Context(prefix, last, frozenset(i for i, found in seen.items() if found == {last}))


def _rename_key(key: str, rules: tuple[Rule, ...], forward: bool, ctx: _Context) -> str:
    """``key`` renamed by the first rule that matches it (and its rest by that rule's inner rules)."""
    for i, rule in enumerate(rules):
        source, target = rule.sides(forward)
        hit = _capture(source, key, ctx.prefix)
        if hit is None:
            continue
        values, end = hit
        if "last" in values and (values["last"] != ctx.last or i not in ctx.sole):
            continue
        head = _fill(target, {**values, "last": ctx.last}, ctx.prefix)
        if head is not None:
            return head + _rename_key(key[end:], rule.inner, forward, ctx)
    return key


def _rename(sd: StateDict, rules: tuple[Rule, ...], forward: bool, prefix: str) -> StateDict:
    ctx = _context(rules, list(sd), forward, prefix)
    out: StateDict = {}
    origin: dict[str, str] = {}
    for k, v in sd.items():
        new = _rename_key(k, rules, forward, ctx)
        if new in origin:
            raise ValueError(f"the keys {origin[new]!r} and {k!r} would both become {new!r}")
        origin[new] = k
        out[new] = v
    return out


@dataclass(frozen=True)
class Layout:
    """One format's names: its rules (first match wins), its tensor steps, its optional prefix (the
    ``{prefix}`` field), the regular expressions that recognise it (each must match the start of
    some key) and a one-line description."""

    description: str
    signature: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    tensor_steps: tuple[TensorStep, ...] = ()
    prefix: str = ""
    norm_eps: float | None = None
    """The one LayerNorm eps the format's own models use everywhere (HF, OpenMMLab: 1e-6), where they
    differ from the official code's (1e-5 in the patch-embedding and spatial-reduction norms, 1e-6
    elsewhere); None: the official values. A file records no eps, so its format tells it."""

    def from_pvt(self, sd: StateDict, prefix: str | None = None) -> StateDict:
        """This library's names -> this layout's (``prefix``: instead of the layout's own)."""
        if prefix is not None and not any("prefix" in _fields(r.theirs) for r in self.rules):
            raise ValueError(f"the {self.description} layout has no prefix")
        for step in self.tensor_steps:
            sd = step.apply(sd, forward=True)
        return _rename(sd, self.rules, True, self.prefix if prefix is None else prefix)

    def to_pvt(self, sd: StateDict) -> StateDict:
        """This layout's names (with or without its prefix) -> this library's."""
        sd = _rename(sd, self.rules, False, self.prefix)
        for step in reversed(self.tensor_steps):
            sd = step.apply(sd, forward=False)
        return sd

    def recognises(self, keys: set[str]) -> bool:
        """Whether every signature expression matches the start of one of ``keys``."""
        return all(any(re.match(sig, k) for k in keys) for sig in self.signature)


# --------------------------------------------------------------------------- the tables
# the block layers both HF models name alike (their attention differs)
_HF_BLOCK = (
    Rule("norm1.", "layer_norm_1."),
    Rule("norm2.", "layer_norm_2."),
    Rule("mlp.fc1.", "mlp.dense1."),
    Rule("mlp.fc2.", "mlp.dense2."),
)
# the official code and HF nest the depthwise convolution of the v2 MLP one module deeper
_NESTED_DWCONV = Rule("mlp.dwconv.", "mlp.dwconv.dwconv.")
# OpenMMLab: one nn.MultiheadAttention (its out_proj is our proj), the MLP as a Sequential of 1x1
# convolutions: fc1 at 0, v2's depthwise convolution at 1, fc2 after the activation and dropout
_MM_BLOCK = (
    Rule("attn.proj.", "attn.attn.out_proj."),
    Rule("mlp.fc1.", "ffn.layers.0."),
    Rule("mlp.dwconv.", "ffn.layers.1."),
)
_MM_STEPS = (
    Fuse((".attn.q.", ".attn.kv."), ".attn.attn.in_proj_", shares=(1, 2)),
    PointwiseConv((".mlp.fc1.", ".mlp.fc2.")),
)
_MM_ATTN = r"layers\.\d+\.1\.\d+\.attn\.attn\.in_proj_weight"

LAYOUTS: dict[str, Layout] = {
    "pvt": Layout(FORMATS["pvt"], signature=(r"stages\.0\.patch_embed\.",)),
    "official": Layout(
        FORMATS["official"],
        signature=(r"(patch_embed|block|pos_embed)\d+[.]?",),
        rules=(
            Rule("stages.{s}.patch_embed.", "patch_embed{s+1}."),
            Rule("stages.{s}.pos_embed", "pos_embed{s+1}"),
            Rule("stages.{last}.cls_token", "cls_token"),
            Rule("stages.{s}.blocks.{b}.", "block{s+1}.{b}.", inner=(_NESTED_DWCONV,)),
            Rule("stages.{last}.norm.", "norm."),  # v1: one final norm
            Rule("stages.{s}.norm.", "norm{s+1}."),  # v2: one per stage
        ),
    ),
    "timm": Layout(
        FORMATS["timm"],
        signature=(r"patch_embed\.", r"stages\."),
        rules=(
            Rule("stages.0.patch_embed.", "patch_embed."),
            Rule("stages.{s}.patch_embed.", "stages.{s}.downsample."),
        ),
    ),
    "hf_v2": Layout(
        FORMATS["hf_v2"],
        signature=(r"(pvt_v2\.)?encoder\.layers\.\d+\.",),
        prefix="pvt_v2.",
        rules=(
            Rule("stages.{s}.patch_embed.proj.", "{prefix}encoder.layers.{s}.patch_embedding.proj."),
            Rule("stages.{s}.patch_embed.norm.", "{prefix}encoder.layers.{s}.patch_embedding.layer_norm."),
            Rule(
                "stages.{s}.blocks.{b}.",
                "{prefix}encoder.layers.{s}.blocks.{b}.",
                inner=_HF_BLOCK
                + (
                    Rule("attn.q.", "attention.query."),
                    Rule("attn.sr.", "attention.spatial_reduction."),
                    Rule("attn.norm.", "attention.layer_norm."),
                    Rule("attn.proj.", "attention.proj."),
                    _NESTED_DWCONV,
                ),
            ),
            Rule("stages.{s}.norm.", "{prefix}encoder.layers.{s}.layer_norm."),
            Rule("head.", "classifier."),
        ),
        tensor_steps=(Fuse(".attn.kv.", (".attention.key.", ".attention.value.")),),
        norm_eps=1e-6,
    ),
    "hf_v1": Layout(
        FORMATS["hf_v1"],
        signature=(r"(pvt\.)?encoder\.(patch_embeddings|block)\.\d+\.",),
        prefix="pvt.",
        rules=(
            Rule("stages.{s}.patch_embed.proj.", "{prefix}encoder.patch_embeddings.{s}.projection."),
            Rule("stages.{s}.patch_embed.norm.", "{prefix}encoder.patch_embeddings.{s}.layer_norm."),
            Rule("stages.{s}.pos_embed", "{prefix}encoder.patch_embeddings.{s}.position_embeddings"),
            Rule("stages.{s}.cls_token", "{prefix}encoder.patch_embeddings.{s}.cls_token"),
            Rule(
                "stages.{s}.blocks.{b}.",
                "{prefix}encoder.block.{s}.{b}.",
                inner=_HF_BLOCK
                + (
                    Rule("attn.q.", "attention.self.query."),
                    Rule("attn.sr.", "attention.self.sequence_reduction."),
                    Rule("attn.norm.", "attention.self.layer_norm."),
                    Rule("attn.proj.", "attention.output.dense."),
                ),
            ),
            Rule("stages.{last}.norm.", "{prefix}encoder.layer_norm."),
            Rule("head.", "classifier."),
        ),
        tensor_steps=(Fuse(".attn.kv.", (".attention.self.key.", ".attention.self.value.")),),
        norm_eps=1e-6,
    ),
    # v1 before v2 (formats.FORMATS' order): a v1 state dict shows v2's signature too
    "mm_v1": Layout(
        FORMATS["mm_v1"],
        signature=(r"layers\.\d+\.1\.0\.pos_embed$", _MM_ATTN),
        rules=(
            Rule("stages.{s}.patch_embed.proj.", "layers.{s}.0.projection."),
            Rule("stages.{s}.patch_embed.norm.", "layers.{s}.0.norm."),
            Rule("stages.{s}.pos_embed", "layers.{s}.1.0.pos_embed"),
            Rule("stages.{s}.blocks.{b}.", "layers.{s}.1.{b+1}.", inner=_MM_BLOCK + (Rule("mlp.fc2.", "ffn.layers.3."),)),
        ),
        tensor_steps=_MM_STEPS,
        norm_eps=1e-6,
    ),
    "mm_v2": Layout(
        FORMATS["mm_v2"],
        signature=(r"layers\.\d+\.0\.projection\.", _MM_ATTN),
        rules=(
            Rule("stages.{s}.patch_embed.proj.", "layers.{s}.0.projection."),
            Rule("stages.{s}.patch_embed.norm.", "layers.{s}.0.norm."),
            Rule("stages.{s}.blocks.{b}.", "layers.{s}.1.{b}.", inner=_MM_BLOCK + (Rule("mlp.fc2.", "ffn.layers.4."),)),
            Rule("stages.{s}.norm.", "layers.{s}.2."),
        ),
        tensor_steps=_MM_STEPS,
        norm_eps=1e-6,
    ),
}
"""Every format's layout, in the order formats are listed (``pvt``: no rule, the identity)."""


def detect_key_format(sd: StateDict) -> str | None:
    """The format whose signature keys ``sd`` holds (see module doc), or ``None``."""
    keys = set(sd)
    return next((name for name, layout in LAYOUTS.items() if layout.recognises(keys)), None)


def _layout(fmt: str) -> Layout:
    try:
        return LAYOUTS[fmt]
    except KeyError:
        raise ValueError(f"unknown weight format {fmt!r}; accepted: {', '.join(FORMATS)}") from None


def to_pvt(sd: StateDict, fmt: str) -> StateDict:
    """Convert a state dict in format ``fmt`` (a key of :data:`FORMATS`) to this library's names."""
    return _layout(fmt).to_pvt(sd)


def from_pvt(sd: StateDict, fmt: str, prefix: str | None = None) -> StateDict:
    """This library's names -> format ``fmt``'s (the inverse of :func:`to_pvt`); ``prefix`` replaces
    the format's own (HF: ``""`` gives the names of the bare ``PvtV2Model`` / ``PvtModel``)."""
    return _layout(fmt).from_pvt(sd, prefix)


def from_official(sd: StateDict) -> StateDict:
    """Official v1/v2 names -> this library's names."""
    return to_pvt(sd, "official")


def to_official(sd: StateDict) -> StateDict:
    """This library's names -> official names (v1 names where only the last stage has a norm: one
    final ``norm``; else v2 names ``norm1..4``)."""
    return from_pvt(sd, "official")


def from_timm(sd: StateDict) -> StateDict:
    """timm ``pvt_v2_*`` names -> this library's names (only the patch embeddings move)."""
    return to_pvt(sd, "timm")


def to_timm(sd: StateDict) -> StateDict:
    """This library's v2 names -> timm's."""
    return from_pvt(sd, "timm")


def from_hf_v2(sd: StateDict) -> StateDict:
    """transformers ``PvtV2*`` names -> this library's names (``key``/``value`` merged into ``kv``)."""
    return to_pvt(sd, "hf_v2")


def to_hf_v2(sd: StateDict, prefix: str = "pvt_v2.") -> StateDict:
    """This library's v2 names -> ``PvtV2ForImageClassification`` names (``prefix=""``: ``PvtV2Model``)."""
    return from_pvt(sd, "hf_v2", prefix)


def from_hf_v1(sd: StateDict) -> StateDict:
    """transformers ``Pvt*`` (PVT v1) names -> this library's names."""
    return to_pvt(sd, "hf_v1")


def to_hf_v1(sd: StateDict, prefix: str = "pvt.") -> StateDict:
    """This library's v1 names -> ``PvtForImageClassification`` names (``prefix=""``: ``PvtModel``)."""
    return from_pvt(sd, "hf_v1", prefix)


# --------------------------------------------------------------------------- SegFormer and GLPN (transformers)
# Whole task models, read and written by pvt.dense.hf (not by the backbone loader): the MiT encoder under
# ``segformer.`` / ``glpn.`` (our ``backbone.body.``; a bare PVT for SegformerForImageClassification, whose
# ``classifier`` is our ``head``), with PVT v1's HF attention names and the nested depth-wise convolution, and the
# decode heads. Their models build every LayerNorm with eps 1e-5 (they ignore ``layer_norm_eps``).
_HF_MIT_BLOCK = _HF_BLOCK + (
    Rule("attn.q.", "attention.self.query."),
    Rule("attn.sr.", "attention.self.sr."),
    Rule("attn.norm.", "attention.self.layer_norm."),
    Rule("attn.proj.", "attention.output.dense."),
    _NESTED_DWCONV,
)
_HF_MIT_KV = Fuse(".attn.kv.", (".attention.self.key.", ".attention.self.value."))


def _hf_mit_rules(ours: str) -> tuple[Rule, ...]:
    """The MiT encoder's rules with our names under ``ours`` (``""``: a bare PVT)."""
    return (
        Rule(f"{ours}stages.{{s}}.patch_embed.proj.", "{prefix}encoder.patch_embeddings.{s}.proj."),
        Rule(f"{ours}stages.{{s}}.patch_embed.norm.", "{prefix}encoder.patch_embeddings.{s}.layer_norm."),
        Rule(f"{ours}stages.{{s}}.blocks.{{b}}.", "{prefix}encoder.block.{s}.{b}.", inner=_HF_MIT_BLOCK),
        Rule(f"{ours}stages.{{s}}.norm.", "{prefix}encoder.layer_norm.{s}."),
    )


def _hf_task(description: str, signature: tuple[str, ...], prefix: str, rules: tuple[Rule, ...]) -> Layout:
    return Layout(description, signature=signature, prefix=prefix, rules=rules, tensor_steps=(_HF_MIT_KV,), norm_eps=1e-5)


HF_TASK_LAYOUTS: dict[str, Layout] = {
    "hf_mit": _hf_task(
        "HF transformers SegformerForImageClassification / SegformerModel (a MiT encoder)",
        (r"(segformer\.)?encoder\.block\.\d+\.\d+\.mlp\.dwconv\.dwconv\.",), "segformer.",
        _hf_mit_rules("") + (Rule("head.", "classifier."),),
    ),
    "hf_segformer": _hf_task(
        "HF transformers SegformerForSemanticSegmentation", (r"segformer\.encoder\.", r"decode_head\.linear_c\."),
        "segformer.",
        _hf_mit_rules("backbone.body.") + (
            Rule("head.linear_c.{i}.", "decode_head.linear_c.{i}.proj."),
            Rule("head.linear_fuse.", "decode_head.linear_fuse."),
            Rule("head.bn.", "decode_head.batch_norm."),
            Rule("head.classifier.", "decode_head.classifier."),
        ),
    ),
    "hf_glpn": _hf_task(
        "HF transformers GLPNForDepthEstimation", (r"glpn\.encoder\.", r"decoder\.stages\."), "glpn.",
        _hf_mit_rules("backbone.body.") + (
            Rule("decoder.stages.{i}.proj.", "decoder.stages.{i}.convolution."),
            Rule("decoder.stages.{i}.fusion.", "decoder.stages.{i}.fusion.", inner=(
                Rule("conv1.", "convolutional_layer1.0."),
                Rule("bn1.", "convolutional_layer1.1."),
                Rule("conv2.", "convolutional_layer2.0."),
                Rule("bn2.", "convolutional_layer2.1."),
                Rule("conv3.", "convolutional_layer3."),
            )),
            Rule("head.conv1.", "head.head.0."),
            Rule("head.conv2.", "head.head.2."),
        ),
    ),
}
"""transformers' SegFormer and GLPN task models (and MiT classifiers), as :data:`LAYOUTS` declares backbones."""
