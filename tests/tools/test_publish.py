"""``pvt push``: the folder it uploads (weights + model card), ``--dry-run``, and the one-line errors
without network; the upload itself against a stand-in for huggingface_hub's API."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import pvt
from pvt.cli import main as cli_main
from pvt.tools.publish import prepare_push
from pvt.weights.checkpoint import save_model

CONFIG = {"task": "classification", "model": "pvt_v2_b0", "data": "stripes/", "epochs": 2, "batch_size": 8,
          "lr": 0.001, "img_size": 64, "grad_checkpointing": True}


@pytest.fixture()
def run(tmp_path, perturb):
    """A run folder as ``pvt train`` leaves it: best/last weights with metadata, metrics.jsonl, config.yaml."""
    torch.manual_seed(0)
    model = perturb(pvt.create_model("pvt_v2_b0", num_classes=3, accelerate=False))
    folder = tmp_path / "run"
    extra = {"task": "classification", "class_names": ["horizontal", "vertical", "diagonal"], "img_size": 64,
             "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
             "train_config": CONFIG}
    save_model(model, folder / "best.safetensors", variant="pvt_v2_b0", extra=extra)
    records = [{"epoch": 1, "lr": 1e-3, "train_loss": 1.1, "val_loss": 0.98, "val_top1": 41.5, "val_top5": 100.0},
               {"epoch": 2, "lr": 1e-4, "train_loss": 0.9, "val_loss": 1.02, "val_top1": 58.25, "val_top5": 100.0}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "lr"')
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return folder, model


@pytest.fixture()
def no_network(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_dry_run_writes_the_folder_with_a_model_card(run, tmp_path, capsys):
    folder, model = run
    out = tmp_path / "repo"
    assert cli_main(["push", str(folder), "--repo-id", "me/pvt-b0-stripes", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"dry run: wrote the folder that would be uploaded to hf-hub:me/pvt-b0-stripes: {out} "
                          "(README.md, config.json, model.safetensors, preprocessor_config.json); upload it with "
                          f"`hf upload me/pvt-b0-stripes {out}`")
    assert printed[1].startswith("note: LayerNorm eps: HF transformers uses 1e-06 everywhere")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "preprocessor_config.json"]
    card = (out / "README.md").read_text()
    for expected in (
        "library_name: transformers", "pipeline_tag: image-classification",
        "PVT v2-B0 (`pvt_v2_b0`), an image classifier over 3 classes",
        "[PVT v2: Improved Baselines with Pyramid Vision Transformer](https://arxiv.org/abs/2106.13797)",
        "- Input: 64x64 RGB, normalised with mean [0.5, 0.5, 0.5] and std [0.25, 0.25, 0.25]",
        "- Classes: horizontal, vertical, diagonal", "| grad_checkpointing | True |", "| batch_size | 8 |",
        "| metric | last epoch (2) | best (epoch) |", "| loss | 1.02 | 0.98 (1) |", "| top1 | 58.25 | 58.25 (2) |",
        'pvt.create_model("pvt_v2_b0", pretrained="hf-hub:me/pvt-b0-stripes")',
        'AutoModelForImageClassification.from_pretrained("me/pvt-b0-stripes")',
        "`pvt convert hf-hub:me/pvt-b0-stripes DIR --to timm`", "@article{wang2022pvt",
    ):
        assert expected in card, expected
    back = pvt.create_model("pvt_v2_b0", pretrained=out)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert (pre["size"], pre["crop_size"]) == ({"shortest_edge": 73}, {"height": 64, "width": 64})  # 64 / 0.875


def test_repository_as_a_positional_argument(run, tmp_path, capsys):
    """The README's `pvt push runs/<run> me/my-pvt --dry-run`: the repository may be given positionally."""
    folder, _ = run
    out = tmp_path / "pos"
    assert cli_main(["push", str(folder), "me/my-pvt", "--dry-run", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"dry run: wrote the folder that would be uploaded to hf-hub:me/my-pvt: {out}")
    assert (out / "README.md").read_text().count("# my-pvt") == 1
    assert cli_main(["push", str(folder), "me/a", "--repo-id", "me/b", "--dry-run"]) == 2
    assert capsys.readouterr().err == "pvt push: error: two repositories given: me/a and --repo-id me/b; give one\n"
    assert cli_main(["push", str(folder), "--dry-run"]) == 2
    assert capsys.readouterr().err == ("pvt push: error: the hub repository is required: pvt push RUN_OR_FILE "
                                       "OWNER/NAME (or --repo-id OWNER/NAME)\n")


def test_model_card_metadata_and_no_local_paths(tmp_path, perturb):
    """The card's front matter names the hub model the run started from, the hub dataset and the run's scores
    (model-index), and the card publishes no local path of the trainer's machine."""
    model = perturb(pvt.create_model("pvt_v2_b0", num_classes=3, accelerate=False))
    config = {**CONFIG, "pretrained": "hf-hub:timm/pvt_v2_b0.in1k", "data": "/home/someone/private/flowers",
              "output": "/home/someone/runs"}
    extra = {"task": "classification", "class_names": ["a", "b", "c"], "img_size": 64, "train_config": config}
    save_model(model, tmp_path / "run" / "best.safetensors", variant="pvt_v2_b0", extra=extra)
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_top1": 41.5, "val_top5": 100.0}))
    prepare_push(tmp_path / "run", "me/pvt-flowers", tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "timm/pvt_v2_b0.in1k" and "datasets" not in front
    result = front["model-index"][0]["results"][0]
    assert front["model-index"][0]["name"] == "pvt-flowers" and result["dataset"]["name"] == "flowers"
    assert result["metrics"] == [{"type": "accuracy", "name": "top-1 accuracy", "value": 41.5},
                                 {"type": "accuracy", "name": "top-5 accuracy", "value": 100.0}]
    assert "/home/someone" not in card and "data: flowers" in card and str(tmp_path) not in card
    config["data"] = "hf-hub:someone/flowers@v2"
    save_model(model, tmp_path / "run" / "best.safetensors", variant="pvt_v2_b0", extra=extra)
    prepare_push(tmp_path / "run", "me/pvt-flowers", tmp_path / "out", force=True)
    front = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert front["datasets"] == ["someone/flowers"]


def test_timm_repository_and_a_plain_file(run, tmp_path):
    folder, model = run
    done = prepare_push(folder / "best.safetensors", "me/b0-timm", tmp_path / "t", to="timm")
    assert sorted(p.name for p in done.files) == ["README.md", "config.json", "model.safetensors"]
    card = (tmp_path / "t" / "README.md").read_text()
    assert "library_name: timm" in card and 'timm.create_model("hf-hub:me/b0-timm", pretrained=True)' in card
    assert "`pvt convert hf-hub:me/b0-timm DIR --to hf`" in card and "## Metrics" in card
    assert json.loads((tmp_path / "t" / "config.json").read_text())["label_names"] == ["horizontal", "vertical",
                                                                                    "diagonal"]
    timm = pytest.importorskip("timm")
    t = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (t(x) - model(x)).abs().max().item() < 1e-4
    # a bare official file: no run, no metrics, no training section
    torch.save({"model": pvt.weights.keys.to_official(model.state_dict())}, tmp_path / "w.pth")
    prepare_push(tmp_path / "w.pth", "me/b0", tmp_path / "bare", model="pvt_v2_b0")
    card = (tmp_path / "bare" / "README.md").read_text()
    assert "## Training" not in card and "## Metrics" not in card and "## How to use" in card


def test_push_uploads_the_folder(run, tmp_path, monkeypatch, capsys):
    """Without --dry-run: the repository is created and the same folder is uploaded in one commit."""
    import huggingface_hub

    import pvt.weights.hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls["files"] = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(pvt.weights.hub, "_endpoint_reachable", lambda endpoint, timeout=3.0: True)
    folder, _ = run
    assert cli_main(["push", str(folder), "--repo-id", "me/b0", "--private", "--token", "t0k"]) == 0
    assert calls == {"token": "t0k", "create": ("me/b0", True, True),
                     "files": ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]}
    assert capsys.readouterr().out.startswith("pushed README.md, config.json, model.safetensors, "
                                              "preprocessor_config.json to hf-hub:me/b0: https://hub/me/b0/commit/1")


def test_errors_are_one_line(run, tmp_path, no_network, monkeypatch, capsys):
    folder, _ = run
    cases = [
        (["push", str(folder), "--repo-id", "me/b0"],
         "pvt push: error: cannot push to hf-hub:me/b0: no network was reachable (http://127.0.0.1:9 did not answer); "
         "write the folder with `pvt push ... --dry-run --out DIR` and upload it later with `hf upload me/b0 DIR`"),
        (["push", str(folder), "--repo-id", "b0", "--dry-run"],
         "pvt push: error: --repo-id 'b0' is not a hub repository id: expected OWNER/NAME"),
        (["push", str(tmp_path / "nope"), "--repo-id", "me/b0", "--dry-run", "--out", str(tmp_path / "o")],
         f"pvt push: error: checkpoint {str(tmp_path / 'nope')!r} does not exist"),
        (["push", str(folder), "--repo-id", "me/b0", "--dry-run", "--out", str(folder)],
         f"pvt push: error: --out {folder} is the source {folder}: pvt never replaces a folder its source is part "
         "of; choose another --out outside it"),
        (["push", str(folder), "--repo-id", "me/b0", "--dry-run", "--out", str(tmp_path / "full")],
         f"pvt push: error: {tmp_path / 'full'} exists and is not an empty folder; pass --force to replace it"),
    ]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "README.md").write_text("an earlier dry run")
    for argv, expected in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err == expected + "\n", err
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli_main(["push", str(folder), "--repo-id", "me/b0"]) == 2
    assert "cannot push to hf-hub:me/b0: offline mode is on (HF_HUB_OFFLINE=1)" in capsys.readouterr().err
