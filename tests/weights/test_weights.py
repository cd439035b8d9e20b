"""Weights: key conversions, format detection, containers, head rules, error messages, the hub
(without network) and `pvt convert`."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings

import pytest
import torch
from safetensors.torch import save_file

import pvt
from pvt.cli import main as cli_main
from pvt.weights import (
    create_pretrained,
    hf_config_to_pvt,
    infer_architecture,
    load_checkpoint,
    pvt_to_hf_config,
    read_checkpoint,
)
from pvt.weights import keys as K
from pvt.weights.checkpoint import save_model
from pvt.weights.loading import adapt_input_conv
from pvt.weights.shapes import matching_variants

ALL = pvt.list_models()
V2 = pvt.list_models("pvt_v2_*")


def meta_sd(name: str, **kw) -> dict[str, torch.Tensor]:
    """A variant's state dict with shapes only (no memory, no init)."""
    with torch.device("meta"):
        return pvt.create_model(name, **kw).state_dict()


def same_tensors(a: dict, b: dict) -> bool:
    """Same names (in any order) and equal tensors."""
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return pvt.create_model("pvt_v2_b0").eval()


@pytest.fixture()
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- pure key conversions
@pytest.mark.parametrize("name", ALL)
def test_official_round_trip_is_identity(name):
    sd = meta_sd(name)
    off = K.to_official(sd)
    assert K.detect_key_format(off) == "official"
    back = K.from_official(off)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)


def test_official_v2_names_exactly():
    off = K.to_official(meta_sd("pvt_v2_b0"))
    stage1 = [k for k in off if k.startswith(("patch_embed1.", "block1.0.", "norm1."))]
    assert stage1 == [
        "patch_embed1.proj.weight", "patch_embed1.proj.bias", "patch_embed1.norm.weight", "patch_embed1.norm.bias",
        "block1.0.norm1.weight", "block1.0.norm1.bias", "block1.0.attn.q.weight", "block1.0.attn.q.bias",
        "block1.0.attn.kv.weight", "block1.0.attn.kv.bias", "block1.0.attn.proj.weight", "block1.0.attn.proj.bias",
        "block1.0.attn.sr.weight", "block1.0.attn.sr.bias", "block1.0.attn.norm.weight", "block1.0.attn.norm.bias",
        "block1.0.norm2.weight", "block1.0.norm2.bias", "block1.0.mlp.fc1.weight", "block1.0.mlp.fc1.bias",
        "block1.0.mlp.dwconv.dwconv.weight", "block1.0.mlp.dwconv.dwconv.bias", "block1.0.mlp.fc2.weight",
        "block1.0.mlp.fc2.bias", "norm1.weight", "norm1.bias",
    ]
    assert [k for k in off if not k.startswith(("patch_embed", "block"))] == [
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
        "norm4.weight", "norm4.bias", "head.weight", "head.bias",
    ]
    assert len(off) == 178  # 6 blocks x 20 tensors + 2 (no SR in stage 4) x 16 + 16 embed + 8 norms + head


def test_official_v1_names_exactly():
    off = K.to_official(meta_sd("pvt_v1_tiny"))
    assert [k for k in off if not k.startswith(("patch_embed", "block"))] == [
        "pos_embed1", "pos_embed2", "pos_embed3", "cls_token", "pos_embed4", "norm.weight", "norm.bias",
        "head.weight", "head.bias",
    ]
    assert tuple(off["pos_embed4"].shape) == (1, 50, 512) and tuple(off["pos_embed1"].shape) == (1, 3136, 64)
    assert "block4.0.attn.sr.weight" not in off and tuple(off["block1.0.attn.sr.weight"].shape) == (64, 64, 8, 8)
    assert not any("dwconv" in k for k in off)


@pytest.mark.parametrize("name", V2)
def test_official_names_agree_with_timms_own_remap(name):
    """timm's checkpoint_filter_fn (official -> timm) applied to our official names gives our timm names."""
    timm_pvt = pytest.importorskip("timm.models.pvt_v2")
    sd = meta_sd(name)
    via_timm = timm_pvt.checkpoint_filter_fn(K.to_official(sd), None)
    ours = K.to_timm(sd)
    assert set(via_timm) == set(ours) and all(via_timm[k].shape == ours[k].shape for k in ours)
    assert K.detect_key_format(ours) == "timm"
    back = K.from_timm(ours)
    assert list(back) == list(sd)


def test_hf_round_trips_split_and_merge_kv(b0):
    sd = b0.state_dict()
    hf = K.to_hf_v2(sd)
    assert K.detect_key_format(hf) == "hf_v2"
    kv = sd["stages.0.blocks.0.attn.kv.weight"]  # (64, 32): rows 0..31 keys, 32..63 values
    assert torch.equal(hf["pvt_v2.encoder.layers.0.blocks.0.attention.key.weight"], kv[:32])
    assert torch.equal(hf["pvt_v2.encoder.layers.0.blocks.0.attention.value.weight"], kv[32:])
    assert len(hf) == len(sd) + 8 * 2  # 8 blocks: kv weight and bias each become key + value
    assert same_tensors(K.from_hf_v2(hf), sd)
    bare = K.to_hf_v2(sd, prefix="")
    assert "encoder.layers.3.layer_norm.bias" in bare and "classifier.weight" in bare
    assert same_tensors(K.from_hf_v2(bare), sd)


def test_v1_hf_round_trip():
    torch.manual_seed(0)
    sd = {k: torch.randn(v.shape) for k, v in meta_sd("pvt_v1_tiny", num_classes=3).items()}
    hf = K.to_hf_v1(sd)
    assert "pvt.encoder.patch_embeddings.3.cls_token" in hf and "pvt.encoder.layer_norm.weight" in hf
    assert same_tensors(K.from_hf_v1(hf), sd)


def test_detect_and_strip_wrappers():
    sd = {"module._orig_mod.stages.0.patch_embed.proj.weight": torch.zeros(1)}
    assert list(K.strip_wrappers(sd)) == ["stages.0.patch_embed.proj.weight"]
    assert K.detect_key_format({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}) is None
    with pytest.raises(ValueError, match="unknown weight format 'keras'; accepted: pvt, official, timm, hf_v2, hf_v1, "
                                         "mm_v1, mm_v2"):
        K.to_pvt({}, "keras")
    # one layout per read format, tried in the order pvt.weights.formats (torch-free: `pvt convert --help`) lists
    assert list(K.LAYOUTS) == list(K.FORMATS) and [lay.description for lay in K.LAYOUTS.values()] == list(
        K.FORMATS.values())


def numbered(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stand-ins for ``sd``'s tensors (meta ones included) with the same shapes, holding one row
    number plus a per-tensor offset: a swapped tensor, or swapped halves of a split one, compare
    unequal. Rows are broadcast, so even the largest variant costs one row per tensor."""
    out = {}
    for i, (k, v) in enumerate(sd.items()):
        rows = torch.arange(v.shape[0] if v.ndim else 1, dtype=torch.float32) + 10_000 * i
        out[k] = rows.view(-1, *[1] * (v.ndim - 1)).expand(v.shape) if v.ndim else rows[0]
    return out


def exactly(a: dict, b: dict) -> bool:
    """Same names in the same order and equal tensors."""
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def back_exactly(back: dict, sd: dict, fmt: str) -> bool:
    """:func:`exactly`, but in any order for a layout that fuses several of our tensors into one
    (OpenMMLab's ``q`` + ``kv``: they come back side by side, the biases after the weights)."""
    fused = any(len(getattr(step, "ours", ())) > 1 for step in K.LAYOUTS[fmt].tensor_steps if isinstance(step, K.Fuse))
    return same_tensors(back, sd) if fused else exactly(back, sd)


FORMATS = [f for f in K.FORMATS if f != "pvt"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ALL)
def test_every_variant_round_trips_exactly_through_every_format(name, fmt):
    """ours -> fmt -> ours is the identity (names, order, tensors), with and without a head; where the
    format has a prefix, without it too."""
    for kw in ({}, {"num_classes": 0}):
        sd = numbered(meta_sd(name, **kw))
        theirs = K.from_pvt(sd, fmt)
        assert back_exactly(K.to_pvt(theirs, fmt), sd, fmt)
        if K.LAYOUTS[fmt].prefix:
            bare = K.from_pvt(sd, fmt, prefix="")
            assert not any(k.startswith(K.LAYOUTS[fmt].prefix) for k in bare)
            assert exactly(K.to_pvt(bare, fmt), sd)


def _references(name: str) -> list[tuple[str, str | None, dict[str, torch.Tensor], int]]:
    """``(format, prefix, state dict, num_classes)`` of the reference models for variant ``name``:
    timm's (v2) and transformers' with and without the classifier, built from ``pvt_to_hf_config``."""
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    fields = pvt_to_hf_config(pvt.get_variant(name).config)
    kind = fields.pop("model_type")
    v2 = kind == "pvt_v2"
    config = (transformers.PvtV2Config if v2 else transformers.PvtConfig)(**fields, num_labels=1000)
    with torch.device("meta"):
        hf = (transformers.PvtV2ForImageClassification if v2 else transformers.PvtForImageClassification)(config)
        refs = [("hf_v2" if v2 else "hf_v1", None, hf.state_dict(), 1000),
                ("hf_v2" if v2 else "hf_v1", "", getattr(hf, kind).state_dict(), 0)]
        if v2:
            mlp = pvt.get_variant(name).config.mlp_ratios  # timm has no MiT rows: PVT v2's with MiT's ratios
            refs.append(("timm", None, timm.create_model(name.replace("mit_", "pvt_v2_"), pretrained=False,
                                                         mlp_ratios=mlp).state_dict(), 1000))
    return refs


@pytest.mark.parametrize("name", ALL)
def test_reference_layouts_convert_exactly_both_ways(name):
    """The reference implementations' own state dicts: detected, renamed to exactly our names and
    shapes, and back to exactly theirs (the tensors of a split ``kv`` included)."""
    for fmt, prefix, ref, classes in _references(name):
        ref = numbered(ref)
        assert K.detect_key_format(ref) == fmt
        ours = K.to_pvt(ref, fmt)
        expected = meta_sd(name, num_classes=classes)
        assert set(ours) == set(expected), (fmt, set(ours) ^ set(expected))
        assert all(ours[k].shape == v.shape for k, v in expected.items()), fmt
        again = K.from_pvt(ours, fmt, prefix=prefix)
        assert set(again) == set(ref) and all(torch.equal(again[k], ref[k]) for k in ref), fmt


def _rule_groups(layout: K.Layout) -> list[dict[str, torch.Tensor]]:
    """Our keys for every rule of ``layout``, each inner rule and each tensor step, in groups that a
    conversion sees together: the four stages' patch embeddings as anchors (the ``{last}`` rules need a
    last stage), plus one rule's keys for stages 0..3 and blocks 0..1 (a ``{last}`` rule: the last stage
    alone). A group's rest no inner rule knows (``weight``) is carried over."""
    anchors = [f"stages.{s}.patch_embed.proj.weight" for s in range(4)]
    groups = []
    for rule in layout.rules:
        heads = {rule.ours.format(s=s, b=b, last=3) for s in range(4) for b in range(2)}
        rests = [r.ours + "weight" for r in rule.inner] + ["weight"] if rule.ours.endswith(".") else [""]
        groups.append(anchors + sorted(h + r for h in heads for r in rests))
    rows = {}  # a fused tensor's parts: rows in the proportions of its shares
    for step in layout.tensor_steps:
        parts = [f"stages.{s}.blocks.0{part}weight" for s in range(4) for part in step.ours]
        shares = getattr(step, "shares", ()) if len(step.ours) > 1 else ()
        rows.update({k: 12 * shares[i % len(shares)] for i, k in enumerate(parts)} if shares else {})
        groups.append(anchors + parts)
    return [numbered({k: torch.empty(rows.get(k, 12), 2) for k in dict.fromkeys(g)}) for g in groups]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_table_is_inverted_by_itself(fmt):
    """Every rule, inner rule and tensor step: forwards renames each of its keys (no key of ours is
    left as it was), and backwards gives back exactly the keys, their order and the tensors."""
    layout = K.LAYOUTS[fmt]
    groups = _rule_groups(layout)
    assert len(groups) == len(layout.rules) + len(layout.tensor_steps)
    for sd in groups:
        for prefix in {None, ""} if layout.prefix else {None}:
            theirs = layout.from_pvt(sd, prefix)
            assert not set(theirs) & set(sd), sorted(set(theirs) & set(sd))
            assert back_exactly(layout.to_pvt(theirs), sd, fmt)


def test_last_stage_rules_apply_only_to_a_sole_last_stage():
    """v1 names a final norm without a stage number; a v2 state dict (a norm in every stage) keeps
    numbered norms, and HF v1 (which has only the final one) leaves such norms for the loader to report."""
    v1, v2 = numbered(meta_sd("pvt_v1_tiny")), numbered(meta_sd("pvt_v2_b0"))
    assert [k for k in K.to_official(v1) if k.startswith("norm")] == ["norm.weight", "norm.bias"]
    assert [k for k in K.to_official(v2) if k.startswith("norm")] == [
        f"norm{s}.{p}" for s in range(1, 5) for p in ("weight", "bias")]
    hf = K.to_hf_v1(v2)
    assert "pvt.encoder.layer_norm.weight" not in hf
    assert [k for k in hf if ".norm." in k] == [f"stages.{s}.norm.{p}" for s in range(4) for p in ("weight", "bias")]
    # backwards, the stage of an unnumbered name is the last one the other keys show
    off = K.to_official(v1)
    assert K.from_official({k: v for k, v in off.items() if not k.startswith(("patch_embed4", "block4", "pos_embed4"))}
                           )["stages.2.norm.weight"] is v1["stages.3.norm.weight"]
    assert K.from_official({"norm.weight": v1["stages.3.norm.weight"]}) == {"norm.weight": v1["stages.3.norm.weight"]}


@pytest.mark.parametrize("fmt", K.FORMATS)
def test_unknown_keys_pass_through_both_ways(fmt):
    extra = {"foo.bar": torch.zeros(1), "stages.x.blocks.y.weight": torch.ones(2)}
    sd = {**numbered(meta_sd("pvt_v2_b0")), **extra}
    theirs = K.from_pvt(sd, fmt)
    assert all(theirs[k] is v for k, v in extra.items())
    back = K.to_pvt(theirs, fmt)
    assert all(back[k] is v for k, v in extra.items()) and back_exactly(back, sd, fmt)


def test_engine_errors():
    with pytest.raises(ValueError, match=r"unknown weight format 'keras'; accepted: pvt, official, timm, hf_v2, hf_v1, "
                                         r"mm_v1, mm_v2"):
        K.from_pvt({}, "keras")
    with pytest.raises(ValueError, match=r"the timm pvt_v2_\* state dict layout has no prefix"):
        K.from_pvt({}, "timm", prefix="model.")
    with pytest.raises(ValueError, match=r"the keys 'patch_embed.proj.weight' and 'stages.0.patch_embed.proj.weight' "
                                         r"would both become 'stages.0.patch_embed.proj.weight'"):
        K.from_timm({"patch_embed.proj.weight": torch.zeros(1), "stages.0.patch_embed.proj.weight": torch.zeros(1)})
    bad_rules = {
        ("stages.{s}.blocks.{b}.", "block{s}."): "both sides need the same index fields",
        ("{prefix}head.", "head."): "belongs to the format's side",
        ("stages.{s}.pos_embed", "pos_embed{s}."): "one side names a group",
    }
    for (ours, theirs), msg in bad_rules.items():
        with pytest.raises(ValueError, match=msg):
            K.Rule(ours, theirs)
    with pytest.raises(ValueError, match="only a group has inner rules"):
        K.Rule("head.weight", "fc.weight", inner=(K.Rule("a.", "b."),))
    with pytest.raises(ValueError, match="no meaning in an inner rule"):
        K.Rule("stages.{s}.", "s{s}.", inner=(K.Rule("norm{last}.", "n."),))
    with pytest.raises(ValueError, match="one side holds one tensor, the other two or more"):
        K.Fuse(".a.", ".b.")
    with pytest.raises(ValueError, match="one positive share per part"):
        K.Fuse(".kv.", (".k.", ".v."), shares=(1, 1, 1))


def test_a_layout_with_its_own_indices_and_a_fused_projection():
    """What another layout needs (OpenMMLab's ``layers.{i}.{0,1,2}`` with a fused q/k/v input
    projection; a sketch here, not that format): stage and block indices in another scheme, and our
    ``q`` and ``kv`` concatenated into one tensor (1 : 2 rows), split again on the way back."""
    layout = K.Layout(
        "sketch", signature=(), rules=(
            K.Rule("stages.{s}.patch_embed.proj.", "layers.{s}.0.projection."),
            K.Rule("stages.{s}.blocks.{b}.", "layers.{s}.1.{b}.", inner=(K.Rule("attn.proj.", "attn.attn.out_proj."),)),
            K.Rule("stages.{s}.norm.", "layers.{s}.2."),
        ),
        tensor_steps=(K.Fuse((".attn.q.", ".attn.kv."), ".attn.attn.in_proj_", shares=(1, 2)),),
    )
    sd = numbered(meta_sd("pvt_v2_b0"))
    theirs = layout.from_pvt(sd)
    w = theirs["layers.2.1.1.attn.attn.in_proj_weight"]
    assert w.shape == (480, 160) and torch.equal(w, torch.cat([sd["stages.2.blocks.1.attn.q.weight"],
                                                               sd["stages.2.blocks.1.attn.kv.weight"]]))
    assert "layers.3.1.0.attn.attn.out_proj.bias" in theirs and "layers.0.0.projection.weight" in theirs
    assert "layers.1.2.weight" in theirs and len(theirs) == len(sd) - 2 * 8  # q and kv: one tensor, 8 blocks
    assert same_tensors(layout.to_pvt(theirs), sd)  # q and kv come back side by side: the order differs


@pytest.mark.parametrize("name", ALL)
def test_shapes_identify_every_variant(name):
    arch = infer_architecture(meta_sd(name, num_classes=7))
    first = next(n for n, v in pvt.VARIANTS.items() if v.config == pvt.get_variant(name).config)  # mit_b5: pvt_v2_b5
    assert matching_variants(arch) == [first]
    assert arch["num_classes"] == 7 and arch["in_chans"] == 3


# --------------------------------------------------------------------------- files and containers
@pytest.mark.parametrize(
    "wrap",
    ["plain", "model", "state_dict", "module_prefix", "official_model", "safetensors_timm", "folder_one_file"],
)
def test_containers_and_formats_load_exactly(wrap, b0, tmp_path, no_warnings):
    sd = b0.state_dict()
    path = tmp_path / "ckpt.pth"
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap == "model":
        torch.save({"model": sd, "epoch": 3, "max_accuracy": 70.5}, path)
    elif wrap == "state_dict":
        torch.save({"state_dict": K.to_timm(sd)}, path)
    elif wrap == "module_prefix":
        torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    elif wrap == "official_model":
        torch.save({"model": K.to_official(sd)}, path)
    elif wrap == "safetensors_timm":
        path = tmp_path / "model.bin"  # the content decides, not the suffix
        save_file(K.to_timm(sd), path)
    else:
        (tmp_path / "dir").mkdir()
        torch.save(K.to_official(sd), tmp_path / "dir" / "pvt_v2_b0.pth")
        path = tmp_path / "dir"
    model = pvt.create_model("pvt_v2_b0", pretrained=path)
    assert same_tensors(model.state_dict(), sd)
    assert model.variant_name == "pvt_v2_b0" and model.num_classes == 1000


def test_own_format_round_trip_keeps_head_and_config(tmp_path, no_warnings):
    torch.manual_seed(0)
    src = pvt.create_model("pvt_v2_b0", num_classes=10)
    path = save_model(src, tmp_path / "ft.safetensors", extra={"class_names": list("abcdefghij")})
    ck = read_checkpoint(path)
    assert ck.format == "pvt" and ck.variant == "pvt_v2_b0" and ck.extra == {"class_names": list("abcdefghij")}
    model = pvt.create_model("pvt_v2_b0", pretrained=path)
    assert model.num_classes == 10 and same_tensors(model.state_dict(), src.state_dict())
    fresh = pvt.create_model("pvt_v2_b0", num_classes=10)
    assert load_checkpoint(fresh, path).ok
    assert same_tensors(fresh.state_dict(), src.state_dict())


def test_own_format_carries_eps_and_image_size(tmp_path):
    src = pvt.create_model("pvt_v1_tiny", img_size=256, embed_norm_eps=1e-6)
    save_model(src, tmp_path / "v1.safetensors")
    model = pvt.create_model("pvt_v1_tiny", pretrained=tmp_path / "v1.safetensors")
    assert model.config.img_size == 256 and model.config.embed_norm_eps == 1e-6
    assert tuple(model.stages[0].pos_embed.shape) == (1, 64 * 64, 64)


def test_own_format_rebuilds_an_ablation_of_its_variant(tmp_path, no_warnings):
    src = pvt.create_model("pvt_v2_b0", linear_sra=True, num_classes=4)  # B0 with B2-Li's attention
    save_model(src, tmp_path / "b0li.safetensors")
    model = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "b0li.safetensors")
    assert model.config.linear_sra and model.num_classes == 4
    assert same_tensors(model.state_dict(), src.state_dict())
    with pytest.raises(ValueError, match="b0li.safetensors .this library's own names. does not fit pvt_v2_b1: its "
                                         "shapes .embed_dims .32, 64, 160, 256.*match no registered variant"):
        pvt.create_model("pvt_v2_b1", pretrained=tmp_path / "b0li.safetensors")


# --------------------------------------------------------------------------- the head
def test_head_follows_checkpoint_or_is_replaced_with_warning(b0, tmp_path):
    torch.save(b0.state_dict(), tmp_path / "b0.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "b0.pth").num_classes == 1000
        assert pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "b0.pth", num_classes=1000).num_classes == 1000
        backbone = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "b0.pth", num_classes=0)
    assert backbone.num_classes == 0 and "head.weight" not in backbone.state_dict()
    with pytest.warns(UserWarning) as rec:
        ft = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "b0.pth", num_classes=10)
    assert [str(w.message) for w in rec] == [
        f"checkpoint {tmp_path / 'b0.pth'}: its 1000-class head was dropped; the model's 10-class head is "
        "freshly initialised (train it before use)"
    ]
    assert rec[0].filename == __file__  # points at the caller
    assert tuple(ft.head.weight.shape) == (10, 256) and ft.head.weight.device.type == "cpu"
    assert float(ft.head.bias.detach().abs().sum()) == 0.0 and 0.01 < float(ft.head.weight.detach().std()) < 0.03
    body = {k: v for k, v in b0.state_dict().items() if not k.startswith("head.")}
    assert same_tensors({k: ft.state_dict()[k] for k in body}, body)


def test_headless_checkpoint(b0, tmp_path):
    sd = {k: v for k, v in b0.state_dict().items() if not k.startswith("head.")}
    save_file(sd, tmp_path / "backbone.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "backbone.safetensors")
    assert m.num_classes == 0 and tuple(m(torch.randn(1, 3, 64, 64)).shape) == (1, 256)
    with pytest.warns(UserWarning, match="backbone.safetensors: it has no classifier head; the model's 5-class head"):
        m5 = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "backbone.safetensors", num_classes=5)
    assert tuple(m5(torch.randn(1, 3, 64, 64)).shape) == (1, 5)


def test_load_checkpoint_strict_and_lenient(b0, tmp_path):
    torch.save(b0.state_dict(), tmp_path / "b0.pth")
    m10 = pvt.create_model("pvt_v2_b0", num_classes=10)
    with pytest.raises(ValueError) as e:
        load_checkpoint(m10, tmp_path / "b0.pth")
    assert str(e.value) == (
        f"checkpoint {tmp_path / 'b0.pth'} (this library's own names) does not fit pvt_v2_b0; mis-shaped keys (2): "
        "head.weight file [1000, 256] vs model [10, 256], head.bias file [1000] vs model [10] (to fine-tune to "
        "another number of classes use pvt.create_model(name, pretrained=..., num_classes=N), which drops the "
        "checkpoint's head)"
    )
    report = load_checkpoint(m10, tmp_path / "b0.pth", strict=False)
    assert report.missing == [] and report.unexpected == []
    assert report.mismatched == [("head.weight", (1000, 256), (10, 256)), ("head.bias", (1000,), (10,))]
    assert torch.equal(m10.stages[2].blocks[1].mlp.fc2.weight, b0.stages[2].blocks[1].mlp.fc2.weight)


# --------------------------------------------------------------------------- errors
def test_wrong_variant_is_named(tmp_path):
    torch.manual_seed(0)
    save_file(K.to_timm(pvt.create_model("pvt_v2_b1").state_dict()), tmp_path / "b1.safetensors")
    with pytest.raises(ValueError) as e:
        pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "b1.safetensors")
    msg = str(e.value)
    assert msg.startswith(
        f"checkpoint {tmp_path / 'b1.safetensors'} (timm pvt_v2_* state dict) does not fit pvt_v2_b0: "
        "it looks like pvt_v2_b1, not pvt_v2_b0; mis-shaped keys (177): stages.0.patch_embed.proj.weight file "
        "[64, 3, 7, 7] vs model [32, 3, 7, 7], stages.0.patch_embed.proj.bias file [64] vs model [32], "
    )
    assert msg.endswith(", ... and 167 more") and "\n" not in msg and "missing keys" not in msg
    # with no variant named, the one the shapes fit is built
    assert create_pretrained(None, tmp_path / "b1.safetensors").variant_name == "pvt_v2_b1"


def test_b2_li_and_b2_are_told_apart(tmp_path):
    sd = {k: torch.zeros(v.shape) for k, v in meta_sd("pvt_v2_b2_li").items()}
    torch.save(sd, tmp_path / "li.pth")
    with pytest.raises(ValueError) as e:
        pvt.create_model("pvt_v2_b2", pretrained=tmp_path / "li.pth")
    msg = str(e.value)
    assert ": it looks like pvt_v2_b2_li, not pvt_v2_b2; unexpected keys (12): stages.3.blocks.0.attn.sr.weight, " in msg
    assert "mis-shaped keys (13): stages.0.blocks.0.attn.sr.weight file [64, 64, 1, 1] vs model [64, 64, 8, 8]" in msg


def test_exact_missing_and_unexpected_lists(b0, tmp_path):
    sd = dict(b0.state_dict())
    del sd["stages.3.norm.bias"]
    sd["stages.1.blocks.0.attn.rel_pos"] = torch.zeros(3)
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(ValueError) as e:
        pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "edited.pth")
    assert str(e.value) == (
        f"checkpoint {tmp_path / 'edited.pth'} (this library's own names) does not fit pvt_v2_b0; "
        "missing keys (1): stages.3.norm.bias; unexpected keys (1): stages.1.blocks.0.attn.rel_pos"
    )


def test_in_chans_mismatch_is_a_shape_error(b0, tmp_path):
    """Only a 3-channel file is adapted to other input channels; a 4-channel one is a shape error."""
    sd = dict(b0.state_dict())
    sd["stages.0.patch_embed.proj.weight"] = torch.randn(32, 4, 7, 7)
    torch.save(sd, tmp_path / "rgbd.pth")
    with pytest.raises(ValueError, match=r"mis-shaped keys \(1\): stages.0.patch_embed.proj.weight file "
                                         r"\[32, 4, 7, 7\] vs model \[32, 1, 7, 7\]$"):
        pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "rgbd.pth", in_chans=1)
    with pytest.raises(ValueError, match=r"file \[32, 4, 7, 7\] vs model \[32, 2, 7, 7\]$"):
        load_checkpoint(pvt.create_model("pvt_v2_b0", in_chans=2), tmp_path / "rgbd.pth")


def test_grayscale_model_equals_rgb_model_on_replicated_image(b0, tmp_path):
    """in_chans=1 from a 3-channel file: the summed filter on a grey image gives what the RGB model
    gives on that image replicated three times."""
    torch.save({"model": K.to_official(b0.state_dict())}, tmp_path / "rgb.pth")
    with pytest.warns(UserWarning, match=r"the 3-channel first patch embedding was adapted to in_chans=1 "
                                         r"\(summed over R, G, B\)$"):
        grey = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "rgb.pth", in_chans=1).eval()
    w = b0.stages[0].patch_embed.proj.weight
    assert grey.stages[0].patch_embed.proj.weight.shape == (32, 1, 7, 7)
    assert torch.allclose(grey.stages[0].patch_embed.proj.weight, w.sum(1, keepdim=True), atol=0, rtol=1e-6)
    rest = {k: v for k, v in b0.state_dict().items() if k != "stages.0.patch_embed.proj.weight"}
    assert all(torch.equal(grey.state_dict()[k], v) for k, v in rest.items())
    torch.manual_seed(1)
    x = torch.rand(2, 1, 64, 80)
    with torch.no_grad():
        a, b = grey(x), b0(x.expand(-1, 3, -1, -1))
        fa, fb = grey.forward_pyramid(x), b0.forward_pyramid(x.expand(-1, 3, -1, -1))
    logit_diff, feat_diff = (a - b).abs().max().item(), max((p - q).abs().max().item() for p, q in zip(fa, fb))
    print(f"\ngrey vs replicated RGB: logits {logit_diff:.2e} (largest logit {b.abs().max().item():.2f}), "
          f"features {feat_diff:.2e}")
    assert logit_diff < 1e-5 * b.abs().max().item() and feat_diff < 1e-4  # float rounding only
    assert not torch.equal(a, grey(torch.rand(2, 1, 64, 80)))  # the test can fail: outputs depend on x


def test_four_channel_model_loads_and_runs(b0, tmp_path):
    """in_chans=4 (RGB-D): RGB repeated cyclically (R, G, B, R) and scaled by 3/4."""
    torch.save(b0.state_dict(), tmp_path / "rgb.pth")
    with pytest.warns(UserWarning, match=r"adapted to in_chans=4 \(RGB repeated cyclically and scaled by 3/4\)"):
        m = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "rgb.pth", in_chans=4).eval()
    w, a = b0.stages[0].patch_embed.proj.weight, m.stages[0].patch_embed.proj.weight
    assert a.shape == (32, 4, 7, 7)
    assert torch.allclose(a, torch.cat([w, w[:, :1]], 1) * 0.75, atol=0, rtol=1e-6)
    out = m(torch.randn(2, 4, 64, 64))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    # into an existing model, and the pure function
    existing = pvt.create_model("pvt_v2_b0", in_chans=4)
    with pytest.warns(UserWarning, match="adapted to in_chans=4"):
        assert load_checkpoint(existing, tmp_path / "rgb.pth").ok
    assert torch.equal(existing.stages[0].patch_embed.proj.weight, a)
    six = adapt_input_conv(w.detach(), 6)
    assert torch.allclose(six, torch.cat([w, w], 1) * 0.5, atol=0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"needs a \(O, 3, kH, kW\) weight, got shape \(32, 4, 7, 7\)"):
        adapt_input_conv(a.detach(), 1)


# --------------------------------------------------------------------------- dense-prediction checkpoints
def _dense_file(path, sd, prefix="backbone."):
    """An mmdetection-style checkpoint: backbone under ``prefix`` plus neck and head tensors."""
    full = {prefix + k: v for k, v in sd.items()}
    full["neck.lateral_convs.0.conv.weight"] = torch.randn(256, 32, 1, 1)
    full["neck.fpn_convs.0.conv.bias"] = torch.randn(256)
    full["bbox_head.retina_cls.weight"] = torch.randn(720, 256, 3, 3)
    full["decode_head.conv_seg.weight"] = torch.randn(150, 128, 1, 1)
    torch.save({"meta": {"epoch": 12, "CLASSES": ("cat", "dog"), "config": "model = dict(...)"},
                "state_dict": full}, path)


def test_split_backbone_finds_the_prefix():
    sd = {"backbone.patch_embed1.proj.weight": 0, "backbone.block1.0.norm1.weight": 0, "neck.a.weight": 0,
          "bbox_head.b.weight": 0, "bbox_head.c.bias": 0}
    inner, prefix, dropped = K.split_backbone(sd)
    assert (prefix, list(inner), dropped) == (
        "backbone.", ["patch_embed1.proj.weight", "block1.0.norm1.weight"], {"neck": 1, "bbox_head": 2})
    ours = {"backbone.body.body.stages.0.patch_embed.proj.weight": 0, "backbone.fpn.layer_blocks.0.weight": 0,
            "head.classifier.weight": 0}
    inner, prefix, dropped = K.split_backbone(ours)
    assert (prefix, list(inner), dropped) == (
        "backbone.body.body.", ["stages.0.patch_embed.proj.weight"], {"backbone.fpn": 1, "head": 1})
    assert K.split_backbone({"neck.a.weight": 0, "backbone.conv1.weight": 0}) is None


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"])
def test_dense_checkpoint_backbone_loads_exactly(name, tmp_path):
    """Official names under ``backbone.`` in ``{"state_dict", "meta"}`` with neck/head tensors: the
    backbone is taken, the rest dropped with a one-line note, and the outputs are identical."""
    torch.manual_seed(0)
    src = pvt.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        for p in src.parameters():  # no tensor keeps its default (LayerNorm ones, zero biases)
            p.add_(torch.randn_like(p) * 0.02)
    _dense_file(tmp_path / "det.pth", K.to_official(src.state_dict()))
    n = len(src.state_dict())
    note = (f"checkpoint {tmp_path / 'det.pth'} is a dense-prediction checkpoint: took the {n} backbone tensors "
            "under 'backbone.' and dropped the other 4 (neck.* (2), bbox_head.* (1), decode_head.* (1))")
    with pytest.warns(UserWarning) as rec:
        m = pvt.create_model(name, pretrained=tmp_path / "det.pth", num_classes=0).eval()
    assert [str(r.message) for r in rec] == [note]
    assert same_tensors(m.state_dict(), src.state_dict())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(m.forward_pyramid(x), src.forward_pyramid(x)))
        assert torch.equal(m(x), src(x))
    # the variant is inferred from the shapes; an existing model takes it too
    with pytest.warns(UserWarning, match="dense-prediction checkpoint"):
        assert create_pretrained(None, tmp_path / "det.pth").variant_name == name
    fresh = pvt.create_model(name, num_classes=0)
    with pytest.warns(UserWarning, match="dense-prediction checkpoint"):
        assert load_checkpoint(fresh, tmp_path / "det.pth").ok
    assert same_tensors(fresh.state_dict(), src.state_dict())


def test_task_model_takes_a_dense_checkpoint_as_backbone(tmp_path):
    """create_dense_model(..., pretrained=<detection checkpoint>): the backbone weights are the file's;
    a task model of this library (backbone under ``backbone.body.body.``) works the same way."""
    from pvt.dense import create_dense_model

    torch.manual_seed(0)
    src = pvt.create_model("pvt_v2_b0", num_classes=0)
    _dense_file(tmp_path / "det.pth", K.to_official(src.state_dict()))
    with pytest.warns(UserWarning, match="dense-prediction checkpoint"):
        det = create_dense_model("retinanet_pvt_v2_b0", num_classes=3, pretrained=tmp_path / "det.pth")
    body = det.backbone.body.body
    assert same_tensors({k: v for k, v in body.state_dict().items()}, src.state_dict())
    torch.save(det.state_dict(), tmp_path / "ours.pth")
    with pytest.warns(UserWarning, match=r"took the 176 backbone tensors under 'backbone.body.body.' and dropped "
                                         r"the other 36 \(head.\* \(20\), backbone.fpn.\* \(16\)\)$"):
        seg = create_dense_model("semfpn_pvt_v2_b0", num_classes=5, pretrained=tmp_path / "ours.pth")
    assert same_tensors(seg.backbone.body.body.state_dict(), src.state_dict())


def test_own_format_task_model_gives_its_backbone(tmp_path):
    """A detector saved as ``pvt train`` saves it (own format, task metadata, no PVT config) reads as its
    backbone, with the note naming what was dropped; a backbone-only file notes no dropped tensors."""
    from pvt.dense import create_dense_model

    torch.manual_seed(0)
    det = create_dense_model("retinanet_pvt_v2_b0", num_classes=3)
    save_model(det, tmp_path / "best.safetensors", variant="pvt_v2_b0", extra={"task": "detection"})
    ck = read_checkpoint(tmp_path / "best.safetensors")
    assert (ck.format, ck.variant, ck.extra["task"]) == ("pvt", "pvt_v2_b0", "detection")
    assert ck.notes == [f"checkpoint {tmp_path / 'best.safetensors'} is a dense-prediction checkpoint: took the 176 "
                        "backbone tensors under 'backbone.body.body.' and dropped the other 36 (head.* (20), "
                        "backbone.fpn.* (16))"]
    assert same_tensors(ck.state_dict, det.backbone.body.body.state_dict())
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in K.to_official(ck.state_dict).items()}},
               tmp_path / "bb.pth")
    assert read_checkpoint(tmp_path / "bb.pth").notes == [
        f"checkpoint {tmp_path / 'bb.pth'} is a dense-prediction checkpoint: took the 176 backbone tensors under "
        "'backbone.'"]


def test_official_dense_v1_backbone_without_class_token(tmp_path):
    """The official detection / segmentation v1 backbones have no class token and no final LayerNorm
    and keep an unused class slot in ``pos_embed4``: the model is built without a class token and
    computes exactly what they compute (no final LayerNorm either)."""
    torch.manual_seed(0)
    src = pvt.create_model("pvt_v1_tiny", num_classes=0, accelerate=False).eval()  # as create_pretrained: plain
    off = {k: v for k, v in K.to_official(src.state_dict()).items() if k not in ("cls_token", "norm.weight",
                                                                                 "norm.bias")}
    assert off["pos_embed4"].shape == (1, 50, 512)
    _dense_file(tmp_path / "seg.pth", off)
    with pytest.warns(UserWarning) as rec:
        m = create_pretrained(None, tmp_path / "seg.pth", num_classes=0).eval()
    msgs = [str(r.message) for r in rec]
    assert len(msgs) == 2 and msgs[1] == (
        f"checkpoint {tmp_path / 'seg.pth'} holds a PVT v1 backbone without a class token (as the official "
        "detection and segmentation backbones): the model is built with cls_token=False and the unused class "
        "slot of its last position embedding is dropped; like theirs, it has no final LayerNorm (final_norm=False)")
    assert m.variant_name == "pvt_v1_tiny" and not m.config.cls_token and m.stages[3].cls_token is None
    assert not m.config.final_norm and m.stages[3].norm is None
    assert torch.equal(m.stages[3].pos_embed, src.stages[3].pos_embed[:, 1:])
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        got, ref = m.forward_pyramid(x), src.forward_pyramid(x)
        assert all(torch.equal(a, b) for a, b in zip(got[:3], ref[:3]))
        # the official stage 4: patch embedding + pos_embed4[:, 1:] (resized), blocks, no class token
        s = src.stages[3]
        t, h, w = s.patch_embed(ref[2])
        pe = s.pos_embed[:, 1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
        t = t + torch.nn.functional.interpolate(pe, size=(h, w), mode="bilinear").flatten(2).transpose(1, 2)
        for blk in s.blocks:
            t = blk(t, h, w)
        assert (got[3] - t.transpose(1, 2).reshape(1, 512, h, w)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match=r"missing keys \(3\): stages.3.cls_token, stages.3.norm.weight, "
                                         r"stages.3.norm.bias.*builds the model without one\)$"):
        load_checkpoint(pvt.create_model("pvt_v1_tiny", num_classes=0), tmp_path / "seg.pth")


class _Trap:
    """Pickles to a call that would create a file if the loader executed it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_bad_files_name_the_file(tmp_path, b0):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01garbage" * 50)
    full = tmp_path / "full.pth"
    torch.save(b0.state_dict(), full)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    st_full = tmp_path / "full.safetensors"
    save_file(b0.state_dict(), st_full)
    st_trunc = tmp_path / "trunc.safetensors"
    st_trunc.write_bytes(st_full.read_bytes()[:5000])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    alist = tmp_path / "list.pth"
    torch.save([1, 2, 3], alist)
    notensor = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, notensor)
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, resnet)
    marker = tmp_path / "executed"
    trap = tmp_path / "trap.pth"
    torch.save({"model": b0.state_dict(), "args": _Trap(str(marker))}, trap)
    cases = {
        garbage: f"{garbage} is not a checkpoint: neither a PyTorch file (zip archive or pickle) nor a safetensors "
        "file (it starts with bytes b'\\x00\\x01')",
        trunc: f"{trunc} is not a readable PyTorch checkpoint (corrupt or truncated?): PytorchStreamReader failed "
        "reading zip archive: failed finding central directory",
        st_trunc: f"{st_trunc} is not a readable safetensors file (corrupt or truncated?)",
        empty: f"{empty} is empty (0 bytes): not a checkpoint",
        alist: f"{alist} holds a list, not a state dict (a mapping of names to tensors)",
        notensor: f"{notensor} holds no tensors: a dict with keys [epoch, lr]; expected a state dict, possibly "
        "under one of ['state_dict', 'model', 'model_state_dict', 'module', 'model_state']",
        resnet: f"{resnet} is not a PVT checkpoint: none of its 2 tensor names (conv1.weight, fc.bias, ...) "
        "follows a known layout",
        trap: f"{trap} was refused as unsafe: it holds Python objects besides tensors (getattr), which "
        "torch.load(weights_only=True) refuses to build: nothing from a file is executed here",
    }
    for path, expected in cases.items():
        with pytest.raises(ValueError) as e:
            pvt.create_model("pvt_v2_b0", pretrained=path)
        assert str(e.value).startswith(expected), (path, str(e.value))
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path / 'nope.pth'}"):
        pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "nope.pth")


def test_bad_folders(tmp_path, b0):
    empty = tmp_path / "empty"
    empty.mkdir()
    two = tmp_path / "two"
    two.mkdir()
    torch.save(b0.state_dict(), two / "a.pth")
    torch.save(b0.state_dict(), two / "b.pth")
    badjson = tmp_path / "badjson"
    badjson.mkdir()
    (badjson / "config.json").write_text("{not json")
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text(json.dumps({"model_type": "pvt_v2"}))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    save_file({"x": torch.zeros(1)}, other / "model.safetensors")
    cases = {
        empty: f"{empty} is not a checkpoint folder: it has no config.json and no weight file",
        two: f"{two} is not a checkpoint folder: it has no config.json and a.pth, b.pth",
        badjson: f"{badjson / 'config.json'}: not valid JSON",
        noweights: f"{noweights} has a config.json but no model.safetensors or pytorch_model.bin (found: config.json)",
        other: f"{other / 'config.json'}: model_type 'bert' is not a PVT model; accepted: 'pvt_v2', 'pvt'",
    }
    for path, expected in cases.items():
        with pytest.raises(ValueError) as e:
            pvt.create_model("pvt_v2_b0", pretrained=path)
        assert str(e.value).startswith(expected), (path, str(e.value))


# --------------------------------------------------------------------------- HF config.json
def test_hf_configs_map_to_the_variants():
    transformers = pytest.importorskip("transformers")
    v2 = hf_config_to_pvt(transformers.PvtV2Config(num_labels=1000).to_dict())
    assert v2 == pvt.get_variant("pvt_v2_b0").config.replace(layer_norm_eps=1e-6, embed_norm_eps=1e-6, num_classes=0)
    li = hf_config_to_pvt(transformers.PvtV2Config(
        hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], linear_attention=True,
        architectures=["PvtV2ForImageClassification"], num_labels=1000).to_dict())
    assert li == pvt.get_variant("pvt_v2_b2_li").config.replace(embed_norm_eps=1e-6)
    v1 = hf_config_to_pvt(transformers.PvtConfig(architectures=["PvtForImageClassification"]).to_dict())
    assert v1 == pvt.get_variant("pvt_v1_tiny").config.replace(embed_norm_eps=1e-6)
    with pytest.raises(ValueError, match="patch_sizes \\[4, 3, 3, 3\\] with strides \\[4, 2, 2, 2\\] are not PVT v2"):
        hf_config_to_pvt(transformers.PvtV2Config(patch_sizes=[4, 3, 3, 3]).to_dict())


def _hf_folder(path, name="pvt_v2_b0", **cfg):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.PvtV2ForImageClassification(transformers.PvtV2Config(num_labels=1000, **cfg)).eval()
    model.save_pretrained(path)
    return model


def test_hf_heads_mismatch_and_eps_warning(tmp_path):
    _hf_folder(tmp_path / "h4", num_attention_heads=[1, 2, 4, 8])
    with pytest.raises(ValueError, match=r"was made with num_heads \(1, 2, 4, 8\), but pvt_v2_b0 has \(1, 2, 5, 8\); "
                                         r"pass num_heads=\[1, 2, 4, 8\] to use it"):
        pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "h4")
    assert pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "h4", num_heads=(1, 2, 4, 8)).config.num_heads == (
        1, 2, 4, 8)
    _hf_folder(tmp_path / "hf")
    plain = pvt.create_model("pvt_v2_b0")
    with pytest.warns(UserWarning, match=r"was made with embed_norm_eps=1e-06 but the model uses embed_norm_eps=1e-05"):
        assert load_checkpoint(plain, tmp_path / "hf").ok


# --------------------------------------------------------------------------- the hub, without network
def _cache_repo(cache: pathlib.Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does: blobs, a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """An empty hub cache in tmp_path and an endpoint nothing listens on."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return cache


def test_hub_without_network_says_so(hub):
    with pytest.raises(ValueError) as e:
        pvt.create_model("pvt_v2_b0", pretrained="hf-hub:OpenGVLab/pvt_v2_b0")
    msg = str(e.value)
    assert msg.startswith(
        "cannot fetch hf-hub:OpenGVLab/pvt_v2_b0: no network was reachable (http://127.0.0.1:9 did not answer) "
        f"and the files are not in the cache {hub}."
    )
    assert "huggingface-cli download OpenGVLab/pvt_v2_b0 --local-dir DIR" in msg and "pretrained='DIR'" in msg


def test_hub_offline_mode(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"cannot fetch hf-hub:OpenGVLab/pvt_v2_b2@v1: offline mode is on "
                                         r"\(HF_HUB_OFFLINE=1\) and the files are not in the cache"):
        pvt.create_model("pvt_v2_b2", pretrained="hf-hub:OpenGVLab/pvt_v2_b2@v1")
    with pytest.raises(ValueError, match="'hf-hub:pvt_v2_b2' is not a hub id: expected 'hf-hub:<owner>/<name>'"):
        pvt.create_model("pvt_v2_b2", pretrained="hf-hub:pvt_v2_b2")


def test_hub_uses_the_cache_without_network(hub, tmp_path, b0, no_warnings):
    ref = _hf_folder(tmp_path / "hf")
    _cache_repo(hub, "OpenGVLab/pvt_v2_b0", {n: (tmp_path / "hf" / n).read_bytes()
                                             for n in ("config.json", "model.safetensors")})
    # a timm hub repo: timm's config.json and timm's names
    timm_cfg = {"architecture": "pvt_v2_b0", "num_classes": 1000, "pretrained_cfg": {"tag": "in1k"}}
    save_file(K.to_timm(b0.state_dict()), tmp_path / "timm.safetensors")
    _cache_repo(hub, "timm/pvt_v2_b0.in1k", {"config.json": json.dumps(timm_cfg).encode(),
                                             "model.safetensors": (tmp_path / "timm.safetensors").read_bytes()})
    m = pvt.create_model("pvt_v2_b0", pretrained="hf-hub:OpenGVLab/pvt_v2_b0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (m(x) - ref(x).logits).abs().max().item() < 1e-5
    t = pvt.create_model("pvt_v2_b0", pretrained="hf-hub:timm/pvt_v2_b0.in1k")
    assert same_tensors(t.state_dict(), b0.state_dict())
    assert read_checkpoint(pvt.weights.hub.resolve_source("hf-hub:timm/pvt_v2_b0.in1k")).variant == "pvt_v2_b0"


# --------------------------------------------------------------------------- pvt convert
def test_convert_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["convert", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "usage: pvt convert [-h] [--to FORMAT] [--model NAME] [--num-classes N] [--force] SRC DST" in flat
    assert "timm pvt_v2_* state dict" in flat and "hf-hub:<repo id>" in flat and "OpenMMLab PVT v1 backbone" in flat
    assert "layout to write: pvt, hf, timm, official, mmdet, mmseg (default: pvt)" in flat


def test_convert_every_source_format(tmp_path, b0, capsys):
    sd = b0.state_dict()
    torch.save({"model": K.to_official(sd)}, tmp_path / "official.pth")
    save_file(K.to_timm(sd), tmp_path / "timm.safetensors")
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(K.to_hf_v2(sd), hf / "model.safetensors")
    cfg = {"model_type": "pvt_v2", "architectures": ["PvtV2ForImageClassification"], "hidden_sizes": [32, 64, 160, 256],
           "depths": [2, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [8, 8, 4, 4],
           "sr_ratios": [8, 4, 2, 1], "layer_norm_eps": 1e-6}
    (hf / "config.json").write_text(json.dumps(cfg))
    for i, (src, model_args) in enumerate([(tmp_path / "official.pth", ["--model", "pvt_v2_b0"]),
                                           (tmp_path / "timm.safetensors", []), (hf, [])]):
        dst = tmp_path / f"out{i}.safetensors"
        assert cli_main(["convert", str(src), str(dst), *model_args]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"wrote {dst}: pvt_v2_b0, 3,666,760 parameters, 1000 classes (from ")
        ck = read_checkpoint(dst)
        assert ck.format == "pvt" and ck.variant == "pvt_v2_b0"
        assert same_tensors(ck.state_dict, sd)
        assert ck.config.embed_norm_eps == (1e-6 if src == hf else 1e-5)
    # own -> own, dropping the head
    assert cli_main(["convert", str(tmp_path / "out1.safetensors"), str(tmp_path / "bb.safetensors"),
                     "--num-classes", "0"]) == 0
    assert read_checkpoint(tmp_path / "bb.safetensors").config.num_classes == 0


def test_convert_errors_exit_2_with_one_line(tmp_path, b0, capsys):
    torch.save(b0.state_dict(), tmp_path / "b0.pth")
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    cases = [
        (["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o.safetensors")],
         f"pvt convert: error: checkpoint not found: {tmp_path / 'nope.pth'}"),
        (["convert", str(tmp_path / "b0.pth"), str(tmp_path / "o.pth")],
         f"pvt convert: error: the pvt format is one .safetensors file; DST {tmp_path / 'o.pth'} does not end in "
         ".safetensors"),
        (["convert", str(tmp_path / "b0.pth"), str(tmp_path / "exists.safetensors")],
         f"pvt convert: error: {tmp_path / 'exists.safetensors'} exists; pass --force to overwrite it"),
        (["convert", str(tmp_path / "b0.pth"), str(tmp_path / "o.safetensors"), "--model", "pvt_v2_b1"],
         f"pvt convert: error: checkpoint {tmp_path / 'b0.pth'} (this library's own names) does not fit pvt_v2_b1: "
         "it looks like pvt_v2_b0, not pvt_v2_b1;"),
        (["convert", str(tmp_path / "b0.pth"), str(tmp_path / "o.safetensors"), "--model", "pvt_v2_b9"],
         "pvt convert: error: unknown model 'pvt_v2_b9'; did you mean"),
    ]
    for argv, expected in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected), err
        assert err.count("\n") == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_hf_v1_folder_and_sharded_hf_v2(tmp_path, b0, capsys):
    torch.manual_seed(0)
    v1 = pvt.create_model("pvt_v1_tiny").state_dict()
    hf1 = tmp_path / "hf1"
    hf1.mkdir()
    torch.save(K.to_hf_v1(v1), hf1 / "pytorch_model.bin")
    (hf1 / "config.json").write_text(json.dumps({
        "model_type": "pvt", "architectures": ["PvtForImageClassification"], "hidden_sizes": [64, 128, 320, 512],
        "depths": [2, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [8, 8, 4, 4],
        "sequence_reduction_ratios": [8, 4, 2, 1], "patch_sizes": [4, 2, 2, 2], "strides": [4, 2, 2, 2],
        "image_size": 224, "layer_norm_eps": 1e-6}))
    assert cli_main(["convert", str(hf1), str(tmp_path / "v1.safetensors")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'v1.safetensors'}: pvt_v1_tiny, 13,229,288 parameters")
    assert same_tensors(read_checkpoint(tmp_path / "v1.safetensors").state_dict, v1)

    hf2 = tmp_path / "sharded"
    hf2.mkdir()
    flat = K.to_hf_v2(b0.state_dict())
    names = list(flat)
    shards = {"model-00001-of-00002.safetensors": names[:100], "model-00002-of-00002.safetensors": names[100:]}
    for fname, ks in shards.items():
        save_file({k: flat[k].contiguous() for k in ks}, hf2 / fname)
    (hf2 / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (hf2 / "config.json").write_text(json.dumps({
        "model_type": "pvt_v2", "architectures": ["PvtV2ForImageClassification"], "hidden_sizes": [32, 64, 160, 256],
        "depths": [2, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [8, 8, 4, 4],
        "sr_ratios": [8, 4, 2, 1]}))
    m = pvt.create_model("pvt_v2_b0", pretrained=hf2)
    assert same_tensors(m.state_dict(), b0.state_dict())


def test_loaded_model_is_trainable_float32(b0, tmp_path):
    """Half-precision files load as float32 parameters that require grad and own their memory."""
    save_file({k: v.half() for k, v in K.to_timm(b0.state_dict()).items()}, tmp_path / "half.safetensors")
    m = pvt.create_model("pvt_v2_b0", pretrained=tmp_path / "half.safetensors")
    params = dict(m.named_parameters())
    assert len(params) == 178 and all(p.dtype == torch.float32 and p.requires_grad for p in params.values())
    w = b0.stages[1].blocks[0].attn.kv.weight
    assert torch.equal(params["stages.1.blocks.0.attn.kv.weight"], w.half().float())
    assert len({p.data_ptr() for p in params.values()}) == 178
    m(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in params.values())


def test_v1_position_embeddings_are_resized_to_img_size(tmp_path):
    """A 224 checkpoint loaded at img_size=256 gets the embeddings the 224 model would interpolate
    to at run time: both models give the same outputs on 256x256 input."""
    torch.manual_seed(0)
    src = pvt.create_model("pvt_v1_tiny", num_classes=5).eval()
    torch.save({"model": K.to_official(src.state_dict())}, tmp_path / "v1.pth")
    big = pvt.create_model("pvt_v1_tiny", pretrained=tmp_path / "v1.pth", img_size=256).eval()
    assert [tuple(s.pos_embed.shape) for s in big.stages] == [(1, 4096, 64), (1, 1024, 128), (1, 256, 320),
                                                              (1, 65, 512)]
    assert torch.equal(big.stages[3].pos_embed[:, 0], src.stages[3].pos_embed[:, 0])  # class-token slot kept
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert (big(x) - src(x)).abs().max().item() < 1e-5
    plain = pvt.create_model("pvt_v1_tiny", num_classes=5, img_size=256)
    assert load_checkpoint(plain, tmp_path / "v1.pth").ok
    assert torch.equal(plain.stages[0].pos_embed, big.stages[0].pos_embed)
