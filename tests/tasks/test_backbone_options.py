"""The backbone options of ``pvt train`` (``--grad-checkpointing``, ``--frozen-stages``, ``--norm-eval``,
``--freeze-backbone``) in every task: they reach the PVT inside the model each task builds, and a run
leaves frozen weights exactly as they started."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from safetensors.torch import load_file

import pvt
from pvt.cli import main
from pvt.models.model import PyramidVisionTransformer
from pvt.tasks import create_task, resolve_config
from pvt.weights.checkpoint import save_model

FAST = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--threads", "1", "--quiet", "--aa", "none",
        "--model", "pvt_v2_b0", "--img-size", "32", "--mixup", "0", "--cutmix", "0"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """Weights to fine-tune from (a 1000-class B0: the runs below get fresh 3-class heads)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("start") / "b0.safetensors"
    return save_model(pvt.create_model("pvt_v2_b0", accelerate=False), path)


def _run(argv: list[str], tmp_path, data) -> dict[str, torch.Tensor]:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data", str(data), "--output", str(tmp_path), "--name", "r", *FAST, *argv]) == 0
    return load_file(tmp_path / "r" / "last.safetensors")


def test_linear_probing_trains_the_head_only(tmp_path, make_stripes, start):
    """--freeze-backbone: every backbone tensor ends bit-identical to the start, the head moved; the options
    are recorded in config.yaml and the run's first line says what is frozen."""
    data = make_stripes(tmp_path / "data")
    after = _run(["--pretrained", str(start), "--freeze-backbone", "--grad-checkpointing", "--lr", "1e-2"],
                 tmp_path, data)
    before = load_file(start)
    backbone = [k for k in after if not k.startswith("head.")]
    assert len(backbone) == 176 and all(torch.equal(after[k], before[k]) for k in backbone)
    assert after["head.weight"].shape == (3, 256) and after["head.weight"].abs().sum() > 0
    cfg = (tmp_path / "r" / "config.yaml").read_text()
    assert "freeze_backbone: true" in cfg and "grad_checkpointing: true" in cfg and "frozen_stages: -1" in cfg
    assert "training pvt_v2_b0 (3.41M params, 3.41M frozen) for classification" in (
        tmp_path / "r" / "train.log").read_text()


def test_frozen_stages_from_the_command_line(tmp_path, make_stripes, start):
    data = make_stripes(tmp_path / "data")
    after = _run(["--pretrained", str(start), "--frozen-stages", "2", "--lr", "1e-2"], tmp_path, data)
    before = load_file(start)
    frozen = [k for k in after if k.startswith(("stages.0.", "stages.1."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not torch.equal(after["stages.3.blocks.1.mlp.fc2.weight"], before["stages.3.blocks.1.mlp.fc2.weight"])


@pytest.mark.parametrize("task,model", [("segmentation", "semfpn_pvt_v2_b0"), ("detection", "retinanet_pvt_v2_b0"),
                                        ("instance", "mask_rcnn_pvt_v2_b0")])
def test_dense_tasks_set_the_options_on_their_backbone(task, model):
    cfg = resolve_config(task=task, model=model, grad_checkpointing=True, frozen_stages=1, norm_eval=True)
    t = create_task(cfg)
    t.class_names = ["a", "b"]
    net = t.build_model()
    (body,) = [m for m in net.modules() if isinstance(m, PyramidVisionTransformer)]
    assert body is net.backbone.body.body
    assert body.grad_checkpointing and body.norm_eval and body.frozen_stages == 1
    assert not any(p.requires_grad for p in body.stages[0].parameters())
    assert all(p.requires_grad for p in body.stages[1].parameters())


def test_semantic_fpn_step_with_checkpointing_gives_the_plain_gradients():
    """One training step of a whole Semantic FPN: checkpointing the backbone changes no gradient; the frozen
    stage gets none."""
    grads = []
    for ckpt in (False, True):
        cfg = resolve_config(task="segmentation", model="semfpn_pvt_v2_b0", grad_checkpointing=ckpt, frozen_stages=1,
                             drop_path=0.1)
        t = create_task(cfg)
        t.class_names = ["a", "b", "c"]
        torch.manual_seed(0)
        net = t.build_model().train()
        torch.manual_seed(1)
        batch = (torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)), 0)  # images, labels, skipped
        t.train_step(net, batch, torch.device("cpu")).loss.backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    plain, ckpt = grads
    assert set(plain) == set(ckpt) and not any(".body.body.stages.0." in n for n in plain)
    assert max((plain[k] - ckpt[k]).abs().max().item() for k in plain) <= 1e-6


def test_both_ways_of_freezing_is_an_error():
    cfg = resolve_config(model="pvt_v2_b0", freeze_backbone=True, frozen_stages=2)
    t = create_task(cfg)
    t.class_names = ["a", "b"]
    with pytest.raises(ValueError, match="freeze_backbone=True and frozen_stages=2: both freeze the backbone"):
        t.build_model()
    with pytest.raises(ValueError, match=r"config value frozen_stages=5: expected an integer <= 4"):
        resolve_config(model="pvt_v2_b0", frozen_stages=5)
