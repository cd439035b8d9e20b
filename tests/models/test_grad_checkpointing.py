"""``model.set_grad_checkpointing(True)``: the same gradients as the plain model (stochastic depth and
dropout on, CPU autocast, a frozen stage before it, under DistributedDataParallel on two gloo processes)
while keeping far fewer activations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pvt

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _grads(model: torch.nn.Module, x: torch.Tensor, seed: int, autocast: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout / drop-path masks in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(x).float().logsumexp(dim=1).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny", "pvt_v2_b2_li"])
def test_gradients_equal_the_plain_models(name):
    torch.manual_seed(0)
    m = pvt.create_model(name, num_classes=7, drop_path_rate=0.2, drop_rate=0.1, attn_drop_rate=0.1).train()
    x = torch.randn(2, 3, 64, 48)
    plain = _grads(m, x, seed=1)
    m.set_grad_checkpointing(True)
    assert m.grad_checkpointing and all(s.grad_checkpointing for s in m.stages)
    ckpt = _grads(m, x, seed=1)
    assert set(ckpt) == set(plain) == {n for n, _ in m.named_parameters()}
    assert max((ckpt[k] - plain[k]).abs().max().item() for k in plain) <= 1e-6
    other = _grads(m, x, seed=2)  # the masks do matter: another seed gives other gradients
    assert max((other[k] - plain[k]).abs().max().item() for k in plain) > 1e-3


def test_gradients_equal_under_autocast_and_after_a_frozen_stage():
    """bf16 CPU autocast is replayed in the recomputation; blocks whose input needs no gradient (after the
    frozen first patch embedding) still get their gradients (the classic reentrant-checkpoint bug)."""
    torch.manual_seed(0)
    m = pvt.create_model("pvt_v2_b0", num_classes=3, drop_path_rate=0.1).train()
    m.set_frozen_stages(0)
    x = torch.randn(2, 3, 64, 64)
    plain = _grads(m, x, seed=3, autocast=True)
    m.set_grad_checkpointing(True)
    ckpt = _grads(m, x, seed=3, autocast=True)
    assert set(ckpt) == set(plain) and "stages.0.blocks.0.attn.q.weight" in ckpt
    assert not any(k.startswith("stages.0.patch_embed.") for k in ckpt)
    assert max((ckpt[k] - plain[k]).abs().max().item() for k in plain) <= 1e-6


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return total


def test_checkpointing_keeps_fewer_activations_and_only_while_recording():
    torch.manual_seed(0)
    m = pvt.create_model("pvt_v2_b0", num_classes=0).train()
    x = torch.randn(1, 3, 128, 128)
    plain = _saved_bytes(m, x)
    m.set_grad_checkpointing(True)
    ckpt = _saved_bytes(m, x)
    assert ckpt < 0.25 * plain, (ckpt, plain)  # the blocks' inputs only
    m.eval()
    with torch.no_grad():  # no recording, no checkpointing: the accelerated inference path as before
        a = m(x)
    m.set_grad_checkpointing(False)
    with torch.no_grad():
        assert torch.equal(a, m(x))


_DDP_SCRIPT = textwrap.dedent('''
    import os, sys, torch, torch.distributed as dist
    import pvt

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def build(ckpt):
        torch.manual_seed(0)
        m = pvt.create_model("pvt_v2_b0", num_classes=5)
        m.set_frozen_stages(0)  # the first blocks' input needs no gradient, their parameters do
        m.set_grad_checkpointing(ckpt)
        return m.train()

    torch.manual_seed(1)
    batches = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    ddp = torch.nn.parallel.DistributedDataParallel(build(True))
    ref = build(False)
    worst, steps = 0.0, 0
    for x in batches:  # two steps: a block's parameters must not be marked ready twice
        ddp.zero_grad(set_to_none=True)
        ddp(x[2 * rank: 2 * rank + 2]).logsumexp(1).mean().backward()
        ref.zero_grad(set_to_none=True)
        ref(x).logsumexp(1).mean().backward()  # the whole batch in one process: the mean DDP averages to
        got = dict(ddp.module.named_parameters())
        for n, p in ref.named_parameters():
            if p.grad is None:
                assert got[n].grad is None, n
                continue
            worst = max(worst, (got[n].grad - p.grad).abs().max().item())
        steps += 1
    assert sum(p.grad is not None for p in ddp.module.parameters()) == sum(
        p.requires_grad for p in ref.parameters()) > 100
    if rank == 0:
        print(f"DDP_GRAD_MAX_DIFF {worst:.3e} steps {steps}")
    dist.destroy_process_group()
''')


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_ddp_two_gloo_processes_equal_one_plain_process(tmp_path):
    script = tmp_path / "ddp_ckpt.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(pvt.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    env.pop("WORLD_SIZE", None)
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else "torchrun"
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("DDP_GRAD_MAX_DIFF"))
    assert float(line.split()[1]) <= 1e-6 and line.endswith("steps 2"), line
