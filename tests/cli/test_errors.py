"""No user error ends in a traceback (issue 14, findings 9 and 10): every sub-command, given each bad input
the issue lists, exits with status 2 and one line on stderr that says what is wrong. Each case runs the
real command line (``pvt.cli.main``) in this process; the disk-full cases in a child with a file-size
limit, so that the disk really refuses the write."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pvt.cli import main


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_stripes, trained_checkpoint):
    root = tmp_path_factory.mktemp("cli-errors")
    data = make_stripes(root / "data", n_train=2, n_val=1)
    run = root / "run"
    run.mkdir()
    good = trained_checkpoint(run / "best.safetensors", data)
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # 400M pixels, ~60 KB
    Image.new("L", (2_000_000, 1)).save(root / "wide.png")  # 321 bytes
    (root / "trunc.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for protocol in (2, 4):  # GLOBAL, and the newer instructions torch's safe unpickler does not run
        with open(root / f"evil{protocol}.pth", "wb") as f:
            pickle.dump({"model": _Evil()}, f, protocol=protocol)
    sd = load_file(str(good))
    sd = {k: v.fill_(float("nan")) if k == "head.weight" else v for k, v in sd.items()}
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    save_file(sd, str(root / "nan.safetensors"), metadata=meta)
    return root, data, good


def _one_line_error(capsys, argv, expected):
    code = main(argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (argv, code, out.err)
    assert lines[0].startswith(f"pvt {argv[0]}: error: "), lines[0]
    assert expected in lines[0], (expected, lines[0])
    return lines[0]


CASES = {
    # predict
    "predict-bomb": (["predict", "--checkpoint", "{good}", "{root}/bomb.png"],
                     "bomb.png' cannot be read: Image size (400000000 pixels) exceeds limit"),
    "predict-wide": (["predict", "--checkpoint", "{good}", "{root}/wide.png"], "more elongated than 100:1"),
    "predict-nan": (["predict", "--checkpoint", "{root}/nan.safetensors", "{root}/wide.png"],
                    "holds non-finite weights (1 tensors, e.g. head.weight)"),
    "predict-truncated": (["predict", "--checkpoint", "{root}/trunc.safetensors", "{root}/wide.png"],
                          "trunc.safetensors is not a readable safetensors file (corrupt or truncated?)"),
    # eval
    "eval-device": (["eval", "--checkpoint", "{root}/run", "--device", "bogus"],
                    "device 'bogus': expected one of auto, cpu, cuda, cuda:N, mps"),
    "eval-nan": (["eval", "--checkpoint", "{root}/nan.safetensors"], "holds non-finite weights"),
    "eval-truncated": (["eval", "--checkpoint", "{root}/trunc.safetensors"],
                       "is not a readable safetensors file (corrupt or truncated?)"),
    "eval-split": (["eval", "--checkpoint", "{good}", "--split", "nosplit"],
                   "split 'nosplit': '{data}/nosplit' does not exist; splits found: train, val"),
    # benchmark
    "benchmark-auto": (["benchmark", "--device", "auto"], "--device auto: name the device to time"),
    # export
    "export-opset": (["export", "pvt_v2_b0", "--opset", "1", "--out", "{root}/x.onnx"],
                     "ONNX opset 1 is not supported; accepted: 18..23"),
    "export-opset-17": (["export", "pvt_v2_b0", "--opset", "17", "--out", "{root}/x.onnx"],
                        "ONNX opset 17 is not supported"),
    # convert
    "convert-unsafe": (["convert", "{root}/evil2.pth", "{root}/o.safetensors"],
                       "evil2.pth was refused as unsafe: it holds Python objects besides tensors (print)"),
    "convert-unsafe-4": (["convert", "{root}/evil4.pth", "{root}/o.safetensors"],
                         "evil4.pth was refused as unsafe: its pickle uses an instruction (opcode 149)"),
    # train
    "train-seed": (["train", "--seed", "99999999999999999999"],
                   "config value seed=99999999999999999999: expected an integer <= 4294967295 and >= 0"),
    "train-name": (["train", "--name", "../../x"], "config value name='../../x': expected a folder name"),
    "train-img-size": (["train", "--img-size", "100000"], "config value img_size=100000: expected an integer <= 4096"),
}
if not torch.cuda.is_available():
    CASES["eval-cuda"] = (["eval", "--checkpoint", "{root}/run", "--device", "cuda"],
                          "device 'cuda': CUDA is not available here")
    CASES["benchmark-cuda"] = (["benchmark", "--device", "cuda"], "device 'cuda': CUDA is not available here")
    CASES["train-cuda"] = (["train", "--device", "cuda", "--data", "{data}"], "CUDA is not available here")
else:
    CASES["benchmark-cuda-index"] = (["benchmark", "--device", f"cuda:{torch.cuda.device_count()}"],
                                     "this machine has")
if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
    CASES["benchmark-mps"] = (["benchmark", "--device", "mps"], "device 'mps': MPS is not available here")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_is_one_line_and_exit_2(env, capsys, case, tmp_path, monkeypatch):
    root, data, good = env
    monkeypatch.chdir(tmp_path)  # nothing a refused command might write lands in the repository
    argv, expected = CASES[case]
    fill = dict(root=root, data=data, good=good)
    _one_line_error(capsys, [a.format(**fill) for a in argv], expected.format(**fill))


def test_onnx_export_without_onnxscript_names_the_extra(env, capsys, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    line = _one_line_error(capsys, ["export", "pvt_v2_b0", "--format", "onnx", "--out", str(tmp_path / "x.onnx")],
                           "ONNX needs the package onnxscript, which is not installed")
    assert "pip install 'pyramid-vision-transformer[export]'" in line
    assert not (tmp_path / "x.onnx").exists()


FULL = r"""
import resource, signal, sys
import pvt.weights, pvt.tools.export
from pvt.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails as a full disk does
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["convert", "export", "predict-json"])
def test_a_full_disk_is_one_line_and_leaves_the_old_file(env, tmp_path, command):
    root, data, good = env
    out = tmp_path / "out.safetensors"
    argv = {"convert": ["convert", str(good), str(out), "--force"],
            "export": ["export", str(good), "--format", "torchscript", "--out", str(out.with_suffix(".pt"))],
            "predict-json": ["predict", "--checkpoint", str(good), str(next((data / "val").rglob("*.png"))),
                             "--json-out", str(tmp_path / "p.json")]}[command]
    target = {"convert": out, "export": out.with_suffix(".pt"), "predict-json": tmp_path / "p.json"}[command]
    target.write_bytes(b"previous version")
    if command == "predict-json":  # a record longer than the limit: many copies of the same image
        argv[3:4] = [argv[3]] * 400
    proc = subprocess.run([sys.executable, "-c", FULL, *argv], capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"cannot write {str(target)!r}: out of space (disk full, quota or file-size limit" in lines[0]
    assert target.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_a_malicious_state_on_resume_is_refused_as_unsafe(env, tmp_path, capsys):
    root, data, good = env
    from pvt.engine.config import TrainConfig
    from pvt.tasks.configs import ClassificationConfig

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(TrainConfig(model="pvt_v2_b0", data=str(data), name="r", output=str(tmp_path),
                                                 task_config=ClassificationConfig(img_size=32)).to_yaml())
    with open(run / "state.pt", "wb") as f:
        pickle.dump({"model": _Evil()}, f, protocol=2)
    _one_line_error(capsys, ["train", "--resume", str(run)], "state.pt was refused as unsafe: it holds Python "
                    "objects besides tensors (print)")
