"""Hostile weight files (issue 18, items 8 and 10): an HF ``config.json`` with values of the wrong type or not
finite, a shard index whose weight_map names a number or a path out of its folder, a ``.pth`` whose patch
embedding is 1-D, and a zip-bomb ``.pth`` (a small DEFLATE member that expands far beyond the file) are each
refused on one line naming the file and the field, by the library and by ``pvt convert``, before torch or a
model sees them."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from pvt.cli import main
from pvt.weights import read_checkpoint

HF_V2 = {"model_type": "pvt_v2", "architectures": ["PvtV2ForImageClassification"], "num_labels": 3,
         "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 2],
         "mlp_ratios": [2, 2, 2, 2], "sr_ratios": [8, 4, 2, 1], "strides": [4, 2, 2, 2], "patch_sizes": [7, 3, 3, 3],
         "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True}

HF_CASES = {
    "eps-nan": ({"layer_norm_eps": float("nan")}, "config.json: layer_norm_eps nan: expected a number 1e-12..0.1"),
    "eps-string": ({"layer_norm_eps": "tiny"}, "config.json: layer_norm_eps 'tiny': expected a number"),
    "labels-inf": ({"num_labels": float("inf")}, "config.json: num_labels inf: expected an integer 0..1000000"),
    "architectures-int": ({"architectures": [1]}, "config.json: architectures [1]: expected a list of 1..16 entries, "
                                                  "each a string"),
    "depths-float": ({"depths": [1, 1, 1.5, 1]}, "config.json: depths [1, 1, 1.5, 1]: expected a list of 1..8 "
                                                 "entries, each an integer 1..1024"),
    "channels-huge": ({"num_channels": 10**9}, "config.json: num_channels 1000000000: expected an integer 1..64"),
    "id2label-list": ({"id2label": ["a"]}, "config.json: id2label is a JSON list"),
    "qkv-string": ({"qkv_bias": "yes"}, "config.json: qkv_bias 'yes': expected true or false"),
}


def _hf_folder(root, config, weight_map=None):
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    if weight_map is None:
        save_file({"x": torch.zeros(1)}, str(root / "model.safetensors"))
    else:
        (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


def _one_line(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"pvt {argv[0]}: error: "), err
    assert expected in err[0], (expected, err[0])


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_an_hf_config_with_a_bad_value_names_the_file_and_field(case, tmp_path, capsys):
    change, expected = HF_CASES[case]
    folder = _hf_folder(tmp_path / "hf", {**HF_V2, **change})
    with pytest.raises(ValueError) as e:
        read_checkpoint(folder)
    assert expected in str(e.value) and str(folder / "config.json") in str(e.value), str(e.value)
    _one_line(capsys, ["convert", str(folder), str(tmp_path / "out.safetensors")], expected)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("value", [5, None, "../outside.safetensors", "/etc/passwd", "sub/model.safetensors",
                                   "notes.txt"])
def test_a_weight_map_names_only_weight_files_in_its_folder(value, tmp_path, capsys):
    folder = _hf_folder(tmp_path / "hf", HF_V2, weight_map={"stages.0.patch_embed.proj.weight": value})
    _one_line(capsys, ["convert", str(folder), str(tmp_path / "out.safetensors")],
              f"model.safetensors.index.json: its weight_map names {value!r}: expected the file name of a weight file "
              "in the same folder")


def test_a_weight_map_that_is_not_an_object_is_refused(tmp_path, capsys):
    folder = _hf_folder(tmp_path / "hf", HF_V2, weight_map=[1, 2])
    _one_line(capsys, ["convert", str(folder), str(tmp_path / "o.safetensors")],
              "is not a valid shard index: its weight_map is not an object")


def test_a_one_dimensional_patch_embedding_is_named_not_an_index_error(tmp_path, capsys):
    from pvt.models.registry import create_model
    from pvt.weights.shapes import infer_architecture

    sd = create_model("pvt_v2_b0", accelerate=False).state_dict()
    assert infer_architecture(sd)["embed_dims"] == (32, 64, 160, 256)
    sd["stages.0.patch_embed.proj.weight"] = torch.zeros(32)
    assert infer_architecture(sd) is None  # was: IndexError: tuple index out of range
    torch.save(sd, tmp_path / "flat.pth")
    _one_line(capsys, ["convert", str(tmp_path / "flat.pth"), str(tmp_path / "o.safetensors")],
              "(tensors of ranks no PVT has, e.g. a patch embedding that is not a 4-D convolution weight")
    _one_line(capsys, ["convert", str(tmp_path / "flat.pth"), str(tmp_path / "o.safetensors"), "--model", "pvt_v2_b0"],
              "stages.0.patch_embed.proj.weight file [32] vs model [32, 3, 7, 7]")


def _deflated(path, tensors):
    """``tensors`` written by torch.save, then every zip member re-packed with DEFLATE."""
    buf = io.BytesIO()
    torch.save(tensors, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for m in src.infolist():
            z.writestr(m.filename, src.read(m.filename))
    return path


def test_a_zip_bomb_pth_is_refused_before_torch_reads_it(tmp_path, capsys, monkeypatch):
    bomb = _deflated(tmp_path / "bomb.pth", {"stages.0.patch_embed.proj.weight": torch.zeros(16 << 20,
                                                                                              dtype=torch.uint8)})
    assert bomb.stat().st_size < 64 << 10  # 16 MiB of zeros in about 16 KB
    assert torch.load(bomb, weights_only=True)["stages.0.patch_embed.proj.weight"].numel() == 16 << 20  # torch inflates it

    def no_load(*a, **k):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", no_load)
    _one_line(capsys, ["convert", str(bomb), str(tmp_path / "o.safetensors")],
              "bomb.pth is not a PyTorch checkpoint this library reads: its zip members expand to 16777")
    with pytest.raises(ValueError, match=r"times the file's \d+ \(e\.g\. '[^']*data/0': 16777216 bytes from \d+\); "
                                         "torch.save stores tensors uncompressed"):
        read_checkpoint(bomb)


def test_a_small_deflated_pth_still_loads(tmp_path):
    from pvt.base.io import load_torch

    # a few random floats barely compress: the members stay near the file's size, which the bound allows
    path = _deflated(tmp_path / "small.pth", {"w": torch.randn(1000)})
    assert torch.equal(load_torch(path)["w"], torch.load(path, weights_only=True)["w"])
