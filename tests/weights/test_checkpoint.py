"""Crafted own-format files (issue 14, finding 6): a small file whose metadata asks for a huge model (a
million blocks, 16384 channels, a billion classes, 100000-pixel inputs, a million class names) or holds
values that do not fit (too few class names, JSON nested too deeply) is refused by every command that reads
it, on one line, before anything is built: shapes first, build second. Issue 18 adds the values nobody bounded
(an 8192-pixel evaluation input, a NaN LayerNorm eps, a std of 1e-30, a mean that is a word, a NaN size or
crop, an unknown model name): every reader refuses them through one check of the metadata
(``pvt.weights.checkpoint.check_metadata``), naming the file and the field. Run under a memory limit, so a reader
that builds first fails this test instead of the machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from pvt.models.config import PVTConfig
from pvt.models.model import PyramidVisionTransformer
from pvt.weights.checkpoint import check_file_config, read_own_format, save_model

SMALL = PVTConfig(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2), mlp_ratios=(2, 2, 2, 2),
                  num_classes=3, img_size=32)


def _craft(src, dst, **changes):
    """``src`` with some metadata values replaced (``config__field`` replaces one config field; a value
    of type bytes is stored as it is, not as JSON)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    for key, value in changes.items():
        if key.startswith("config__"):
            config[key[8:]] = value
        else:
            meta[key] = value.decode() if isinstance(value, bytes) else json.dumps(value)
    meta["config"] = json.dumps(config)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


CRAFTED = {
    "deep": (dict(config__depths=[1_000_000] * 4), "its config asks for depths [1000000, 1000000"),
    "wide": (dict(config__embed_dims=[16384] * 4), "its tensors do not match its own config: 101 of another shape"),
    "wider": (dict(config__embed_dims=[65536] * 4), "its config asks for embed_dims [65536"),
    "classes": (dict(config__num_classes=10**9), "its config asks for num_classes 1000000000"),
    "img_size": (dict(config__img_size=100_000, img_size=100_000), "its config asks for img_size 100000"),
    "few_names": (dict(class_names=["a"]), "names 1 classes but its head has 3 outputs"),
    "many_names": (dict(class_names=[f"c{i}" for i in range(300_000)]), "names 300000 classes but its head has 3"),
    "not_names": (dict(class_names={"a": 1}), "its metadata value class_names={'a': 1}: expected a list of names"),
    "eval_size": (dict(img_size=100_000), "its metadata value img_size=100000: expected an integer 16..4096"),
    "nested": (dict(class_names=b"[" * 100_000 + b"]" * 100_000), "is nested too deeply"),
    # issue 18, items 8, 10 and 12: numbers nobody bounded, an unknown model name, messages naming no field
    "eval_size_8192": (dict(img_size=8192), "its metadata value img_size=8192: expected an integer 16..4096"),
    "eps_nan": (dict(config__layer_norm_eps=float("nan")),
                "invalid PVT config: layer_norm_eps must be a finite number in (0, 1) (typically 1e-6), got nan"),
    "std_tiny": (dict(std=[1e-30] * 3), "its metadata value std=[1e-30, 1e-30, 1e-30]: expected three numbers "
                                        "0.001..1"),
    "mean_word": (dict(mean=["tiny", 0.5, 0.5]), "its metadata value mean=['tiny', 0.5, 0.5]: expected three numbers"),
    "size_nan": (dict(img_size=float("nan")), "its metadata value img_size=nan: expected an integer 16..4096"),
    "crop_nan": (dict(crop_pct=float("nan")), "its metadata value crop_pct=nan: expected a number 0.1..1"),
    "variant": (dict(variant=b"pvt_v2_bzz"), "its metadata names an unknown model 'pvt_v2_bzz'; did you mean "
                                             "pvt_v2_b"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_stripes, trained_checkpoint):
    root = tmp_path_factory.mktemp("crafted")
    data = make_stripes(root / "data", n_train=2, n_val=1)
    good = trained_checkpoint(root / "good.safetensors", data, config=SMALL)
    return root, data, good, {n: _craft(good, root / f"{n}.safetensors", **ch) for n, (ch, _) in CRAFTED.items()}


SCRIPT = r"""
import contextlib, io, json, resource, sys
import pvt.tasks.classification, pvt.weights, pvt.tools.export  # imported before the limit is set
from pvt.cli import main

size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))  # 1 GiB more than now
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException as e:  # a traceback in the real command
            code = f"{type(e).__name__}: {e}"[:300]
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
"""


def test_every_command_refuses_every_crafted_file_on_one_line_under_a_memory_limit(files, tmp_path):
    root, data, good, crafted = files
    image = next((data / "val").rglob("*.png"))
    runs = {}
    for name, path in {**crafted, "good": good}.items():
        runs[f"{name}/convert"] = ["convert", str(path), str(tmp_path / f"{name}.safetensors")]
        runs[f"{name}/predict"] = ["predict", "--checkpoint", str(path), str(image)]
        runs[f"{name}/eval"] = ["eval", "--checkpoint", str(path), "--data", str(data)]
        runs[f"{name}/export"] = ["export", str(path), "--format", "torchscript", "--out", str(tmp_path / f"{name}.pt")]
        runs[f"{name}/pretrained"] = ["train", "--data", str(data), "--pretrained", str(path), "--epochs", "1",
                                      "--img-size", "32", "--output", str(tmp_path), "--name", name, "--workers", "0",
                                      "--batch-size", "2", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(runs)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    wrong = []
    for run, (code, err) in got.items():
        name, command = run.split("/")
        lines = err.strip().splitlines()
        if name == "good":
            ok = code == 0
        elif name in ("few_names", "many_names") and command not in ("predict", "eval"):
            ok = code == 0  # values only predict and eval read: the other commands need not refuse them
        else:
            ok = code == 2 and len(lines) == 1 and CRAFTED[name][1] in lines[0]
        if not ok:
            wrong.append((run, code, err[-400:]))
    assert not wrong, wrong
    assert not (tmp_path / "deep").exists()  # the refused --pretrained run left no folder


def test_every_registered_variant_passes_the_file_checks():
    from pvt.models.variants import VARIANTS

    for v in VARIANTS.values():
        with torch.device("meta"):
            shapes = {k: tuple(t.shape) for k, t in PyramidVisionTransformer(v.config).state_dict().items()}
        check_file_config(v.config, shapes, v.name)


def test_a_file_whose_tensors_do_not_fit_its_config_names_the_tensor(tmp_path):
    path = save_model(PyramidVisionTransformer(SMALL), tmp_path / "m.safetensors")
    bad = _craft(path, tmp_path / "b.safetensors", config__mlp_ratios=[4, 2, 2, 2])
    with pytest.raises(ValueError, match=r"its tensors do not match its own config: 5 of another shape \(file vs "
                                         r"config\), e.g. stages\.0\.blocks\.0\.mlp\.fc1\.weight \[16, 8\] vs \[32, 8\]"):
        read_own_format(bad)
    assert read_own_format(path)[0].keys() == PyramidVisionTransformer(SMALL).state_dict().keys()


def test_an_hf_folder_asking_for_huge_inputs_is_refused_before_its_position_embeddings_are_resized(tmp_path):
    from pvt.weights import read_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "pvt", "hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2],
        "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [8, 8, 4, 4], "sequence_reduction_ratios": [8, 4, 2, 1],
        "strides": [4, 2, 2, 2], "patch_sizes": [4, 2, 2, 2], "image_size": 100_000}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="config.json: image_size 100000: expected an integer 16..4096"):
        read_checkpoint(tmp_path)
