"""Engine: config layering and validation, the task registry, optimiser groups, weights_only state, and
learning on the built-in digits (with its run folder, evaluate and predict)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml

import pvt
from pvt.engine import TrainConfig
from pvt.engine.state import load_state, rng_state, save_state, set_rng_state
from pvt.engine.trainer import amp_dtype, param_groups
from pvt.tasks import get_task, list_tasks, read_config, resolve_config
from pvt.tasks.classification import PRESETS, topk_correct


def test_defaults_are_the_paper_recipe_and_lr_scales_with_batch():
    cfg = resolve_config(data="/somewhere")  # a user folder: the imagenet preset
    tc = cfg.task_config
    assert (cfg.weight_decay, tc.smoothing, tc.mixup, tc.cutmix, tc.reprob) == (0.05, 0.1, 0.8, 1.0, 0.25)
    assert (cfg.epochs, tc.img_size, cfg.warmup_epochs, tc.aa) == (300, 224, 5.0, "rand-m9-mstd0.5-inc1")
    # the official rule: lr = 5e-4 * global batch / 512 -> 1e-3 for 128 x 8 GPUs
    assert cfg.peak_lr(world_size=8) == pytest.approx(1e-3)
    assert resolve_config(lr=3e-4).peak_lr(8) == 3e-4


def test_layers_digits_preset_yaml_then_flags(tmp_path):
    resolved = resolve_config().to_dict()
    assert all(resolved[k] == v for k, v in PRESETS["digits"].items())
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nbatch-size: 16\nlr: 1e-3\n")
    cfg = resolve_config(y, epochs="9")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.task_config.img_size) == (9, 16, 1e-3, 32)
    assert read_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"epochs": "ten"}, "epochs='ten': expected an integer"),
        ({"epochs": 0}, "epochs=0: expected an integer >= 1"),
        ({"lr": -1}, "lr=-1: expected a number >= 0"),
        ({"amp": "fp8"}, "amp='fp8': expected one of auto, none, bf16, fp16"),
        ({"scale": "0.5"}, "scale=.*two numbers"),
        ({"model_ema": "maybe"}, "model_ema='maybe': expected true or false"),
        ({"epochz": 3}, "unknown config key 'epochz' \\(did you mean 'epochs'\\?\\)"),
        ({"model": "pvt_v2_b9"}, "unknown model 'pvt_v2_b9'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"task": "poetry"}, "unknown task 'poetry'; accepted: .*classification"),
    ],
)
def test_bad_values_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_config(**kw)


def test_registry_and_amp_choice():
    assert "classification" in list_tasks()
    task = get_task("classification")(resolve_config())
    assert task.best_metric == "top1"
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="amp='fp16'"):
        amp_dtype("fp16", torch.device("cpu"))


def test_no_weight_decay_on_norms_biases_embeddings():
    model = pvt.create_model("pvt_v1_tiny", num_classes=3)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "stages.0.pos_embed" in nd and "stages.3.cls_token" in nd and "head.bias" in nd
    assert "stages.0.blocks.0.norm1.weight" in nd
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# counted by hand: v1-small, 16 blocks (13 with a reduction conv): decay 13*6 + 3*5 weights + 4 patch
# projections + head = 98; no decay 13*12 + 3*9 block biases/norms + 4*3 patch + 4 pos_embed + cls_token +
# norm 2 + head.bias = 203. v2-b0, 8 blocks (6 with a reduction conv, each with a depth-wise conv): decay
# 6*7 + 2*6 + 4 + 1 = 59; no decay 6*13 + 2*10 + 4*3 patch + 4*2 stage norms + head.bias = 119.
@pytest.mark.parametrize("name, n_decay, n_no_decay", [("pvt_v1_small", 98, 203), ("pvt_v2_b0", 59, 119)])
def test_timms_groups_are_the_hand_written_rule(name, n_decay, n_no_decay):
    """timm's param_groups_weight_decay (with the model's no_weight_decay()) splits the parameters exactly
    as the rule written here before it: no decay for rank <= 1, ``.bias``, position embeddings, class token."""
    model = pvt.create_model(name)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = (sorted(names[id(p)] for p in g["params"]) for g in param_groups(model, 0.05))
    rule = sorted(n for n, p in model.named_parameters()
                  if p.ndim <= 1 or n.endswith((".bias", "pos_embed", "cls_token")))
    assert no_decay == rule and (len(decay), len(no_decay)) == (n_decay, n_no_decay)
    assert sorted(decay + no_decay) == sorted(names.values())
    # weight decay 0 keeps the two groups (one optimizer-state shape), both without decay
    assert [len(g["params"]) for g in param_groups(model, 0.0)] == [n_decay, n_no_decay]
    assert [g["weight_decay"] for g in param_groups(model, 0.0)] == [0.0, 0.0]


def test_state_is_weights_only_and_restores_rng(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    st = rng_state()
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    save_state(tmp_path / "s.pt", {"rng": [st], "epoch": 2, "best": 50.0})
    back = torch.load(tmp_path / "s.pt", weights_only=True)  # raises on any pickled object
    assert back["epoch"] == 2 and back["version"] == 1
    random.seed(0)
    torch.manual_seed(0)
    set_rng_state(load_state(tmp_path / "s.pt")["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect
    assert not list(tmp_path.glob(".*tmp"))


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 1, 0]), (1, 2, 5)) == [1, 2, 3]


# ---------------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run = pvt.train(
        data_dir=str(tmp_path_factory.mktemp("cache")), output=str(out), name="digits", epochs=1, batch_size=32,
        lr=2e-3, warmup_epochs=0.2, aa="none", color_jitter=0.0, workers=0, threads=1, quiet=True,
    )
    return run


def test_learns_the_digits_well_above_chance(digits_run):
    # one epoch (45 steps) at 32x32 from scratch: chance is 10 %
    best = digits_run.best
    assert best["val_top1"] >= 60.0, digits_run.metrics
    assert best["val_loss"] < 0.6 * np.log(10)  # far below the loss of a uniform guess


def test_run_folder_contents(digits_run):
    d = digits_run.run_dir
    names = sorted(p.name for p in d.iterdir() if not p.name.startswith("events.out.tfevents."))
    assert names == ["best.safetensors", "classes.json", "config.yaml", "last.safetensors", "learning_curves.png",
                     "metrics.jsonl", "state.pt", "train.log"]  # no temporary files left behind
    assert len(list(d.glob("events.out.tfevents.*"))) == 1  # TensorBoard's (tensorboard is a test dependency)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1]
    for r in lines:
        assert {"epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_s", "time"} <= set(r)
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100 and r["images_per_s"] > 0
    assert json.loads((d / "classes.json").read_text()) == [str(i) for i in range(10)]
    saved = yaml.safe_load((d / "config.yaml").read_text())
    assert (saved["epochs"], saved["batch_size"], saved["lr"], saved["name"]) == (1, 32, 2e-3, "digits")
    assert saved["img_size"] == 32 and saved["hflip"] == 0.0  # the digits preset, recorded as resolved
    assert resolve_config(d / "config.yaml").to_dict() == saved  # fed back, nothing is re-layered over it
    st = torch.load(d / "state.pt", weights_only=True)
    assert st["epoch"] == 1 and set(st) >= {"model", "optimizer", "scheduler", "scaler", "rng", "best", "updates"}
    assert (d / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_matches_training_metrics_and_predict(digits_run):
    best = digits_run.best
    ev = pvt.evaluate(digits_run.best_checkpoint)
    assert ev["images"] == 360 and ev["img_size"] == 32
    assert ev["top1"] == pytest.approx(best["val_top1"], abs=1e-6)  # same held-out split, same transform
    assert ev["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    val = digits_run.run_dir  # the digits cache is the checkpoint's training data
    from pvt.data import digits_folder
    from pvt.tasks import load_trained

    folder = digits_folder(load_trained(val).task.cfg.data_dir) / "val"
    images = [sorted((folder / str(c)).iterdir())[0] for c in range(10)]
    preds = pvt.predict(digits_run.best_checkpoint, images, topk=3)
    assert [len(p["top"]) for p in preds] == [3] * 10
    for p in preds:
        probs = [t["prob"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    hits = sum(p["top"][0]["class"] == str(c) for c, p in zip(range(10), preds))
    assert hits >= 5


def test_auto_micro_batches_only_on_cpu_when_activations_outgrow_32_mib():
    b0, cpu = pvt.create_model("pvt_v2_b0", num_classes=10), torch.device("cpu")

    def auto(img_size, batch_size, device=cpu, model=b0):
        task = get_task("classification")(resolve_config(model="pvt_v2_b0", img_size=img_size, batch_size=batch_size))
        return task.auto_micro_batch(model, device)

    assert auto(224, 16) == 8  # 16 x 56*56*256 floats = 51 MB: two pieces
    assert auto(224, 128) == 10  # 411 MB: 13 pieces
    assert auto(32, 32) == 0  # the digits demo: 2 MB, whole batches
    assert auto(224, 16, torch.device("cuda")) == 0
    assert auto(224, 16, model=torch.nn.Linear(2, 2)) == 0


def test_micro_batches_sum_to_the_batch_gradient():
    def task_with(**kw):
        task = get_task("classification")(resolve_config(model="pvt_v2_b0", **kw))
        task.class_names = [str(i) for i in range(10)]
        task._build_losses()
        return task

    batch = (torch.randn(10, 3, 64, 64), torch.arange(10), 3)
    mixing = task_with(mixup=0.8, cutmix=0.0)
    assert [len(p[1]) for p, _ in mixing.split_batch(batch, 3)] == [4, 4, 2]  # mixup pairs: even pieces
    task = task_with(smoothing=0.1, mixup=0.0, cutmix=0.0)
    parts = task.split_batch(batch, 3)
    assert [len(p[1]) for p, _ in parts] == [3, 3, 3, 1]
    assert sum(s for _, s in parts) == pytest.approx(1.0) and [p[2] for p, _ in parts][:2] == [3, 0]
    assert task.split_batch(batch, 10) is None
    model = pvt.create_model("pvt_v2_b0", num_classes=10, embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1),
                             depths=(1, 1, 1, 1))

    def grads(pieces):
        model.zero_grad(set_to_none=True)
        for part, share in pieces:
            step = task.train_step(model, part, torch.device("cpu"))
            (step.loss * share).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole, split = grads([(batch, 1.0)]), grads(parts)
    for a, b in zip(split, whole):
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())
    wrong = grads([(p, 1.0 / len(parts)) for p, _ in parts])  # equal shares for unequal pieces: not the same
    assert max((a - b).abs().max().item() for a, b in zip(wrong, whole)) > 1e-4


def test_training_with_micro_batches_matches_whole_batches(tmp_path, make_stripes):
    data = make_stripes(tmp_path / "stripes")
    runs = {}
    for micro in (0, 4):
        runs[micro] = pvt.train(data=str(data), output=str(tmp_path / "runs"), name=f"m{micro}", model="pvt_v2_b0",
                                img_size=32, epochs=2, batch_size=12, micro_batch=micro, lr=1e-3, warmup_epochs=0,
                                aa="none", mixup=0.0, cutmix=0.0, color_jitter=0.0, drop_path=0.0, workers=0,
                                threads=1, quiet=True, seed=0).metrics
    for a, b in zip(runs[0], runs[4]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    log = (tmp_path / "runs" / "m4" / "train.log").read_text()
    assert "micro-batches of 4" in log
