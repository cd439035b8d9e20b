"""CUDA code paths: the same numbers on a GPU as on the CPU, bf16 autocast within tolerance, the GPU
inference path of pvt.accel against plain autocast, training steps, dense models, the engine with mixed
precision, torch.compile without graph breaks, and the benchmark's CUDA timing. Marked ``gpu``; every
test skips cleanly on a machine without CUDA (CI).

Run them on a GPU machine with ``python -m pytest -m gpu tests/accel/test_gpu.py``.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import pvt
from pvt.accel import plain
from pvt.accel.gpu import GpuOps

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Full float32 matrix products on the GPU (no TF32), so GPU and CPU agree to float32 rounding."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"])
@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_cuda_float32_matches_cpu(name, size):
    model = pvt.create_model(name, accelerate=True).eval()
    ref = plain(copy.deepcopy(model))
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        ref_logits, ref_feats = ref(x), ref.forward_pyramid(x)
        gpu = model.cuda()
        logits, feats = gpu(x.cuda()), gpu.forward_pyramid(x.cuda())
    assert (logits.cpu() - ref_logits).abs().max().item() < 1e-4
    assert len(feats) == 4
    for f, r in zip(feats, ref_feats):
        assert f.shape == r.shape and _rel(f, r) < 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_bf16_autocast_within_tolerance(channels_last):
    model = pvt.create_model("pvt_v2_b2", accelerate=True).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        ref = model(x).float()
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x).float()
    cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert cos >= 0.999, cos
    assert _rel(out, ref) < 0.05


def test_cuda_training_step_gradients_match_cpu():
    torch.manual_seed(0)
    model = pvt.create_model("pvt_v2_b0", num_classes=10, drop_path_rate=0.0)
    x, y = torch.randn(4, 3, 64, 80), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    cpu_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    gpu = model.cuda()
    loss = F.cross_entropy(gpu(x.cuda()), y.cuda())
    loss.backward()
    for n, p in gpu.named_parameters():
        assert _rel(p.grad, cpu_grads[n]) < 1e-3, n
    opt = torch.optim.AdamW(gpu.parameters(), lr=1e-3)
    for _ in range(5):  # a few steps on one batch: the loss falls
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step_loss = F.cross_entropy(gpu(x.cuda()).float(), y.cuda())
        step_loss.backward()
        opt.step()
    assert step_loss.item() < loss.item()


@pytest.mark.parametrize("task_model", ["retinanet_pvt_v2_b0", "mask_rcnn_pvt_v2_b0", "semfpn_pvt_v2_b0"])
def test_dense_models_on_cuda_train_and_infer_at_odd_sizes(task_model):
    from pvt.dense import create_dense_model

    model = create_dense_model(task_model, num_classes=3).cuda()
    imgs = [torch.rand(3, 97, 131, device="cuda"), torch.rand(3, 120, 90, device="cuda")]
    if task_model.startswith("semfpn"):
        x = torch.rand(2, 3, 97, 131, device="cuda")
        target = torch.randint(0, 3, (2, 97, 131), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            loss = F.cross_entropy(out.float(), target)
        assert out.shape == (2, 3, 97, 131)
    else:
        targets = []
        for img in imgs:
            boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0]], device="cuda")
            t = {"boxes": boxes, "labels": torch.tensor([1], device="cuda")}
            if task_model.startswith("mask_rcnn"):
                m = torch.zeros(1, *img.shape[-2:], dtype=torch.uint8, device="cuda")
                m[:, 12:70, 10:60] = 1
                t["masks"] = m
            targets.append(t)
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = model(imgs, targets)
        loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if not task_model.startswith("semfpn"):
        model.eval()
        with torch.inference_mode():
            dets = model(imgs)
        assert len(dets) == 2 and all(d["boxes"].device.type == "cuda" for d in dets)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_engine_trains_on_cuda_with_mixed_precision(tmp_path, amp):
    run = pvt.train(
        data_dir=str(tmp_path / "cache"), output=str(tmp_path / "runs"), name=f"digits-{amp}", epochs=1,
        batch_size=32, lr=2e-3, warmup_epochs=0.2, aa="none", color_jitter=0.0, workers=0, quiet=True,
        device="cuda", amp=amp,
    )
    assert run.best["val_top1"] >= 60.0, run.metrics  # chance is 10 %
    rec = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["train_loss"] == rec["train_loss"]  # not NaN
    ev = pvt.evaluate(run.run_dir / "best.safetensors", device="cuda")
    assert ev["top1"] == pytest.approx(run.best["val_top1"], abs=0.5)


def test_compile_has_no_graph_breaks_and_handles_new_sizes():
    import torch._dynamo as dynamo

    model = pvt.create_model("pvt_v2_b0", accelerate=True).cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        explained = dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        dynamo.reset()
        compiled = torch.compile(model, dynamic=True)
        for size in ((224, 224), (97, 131), (256, 320)):
            x = torch.randn(2, 3, *size, device="cuda")
            assert _rel(compiled(x), model(x)) < 1e-4, size


def test_benchmark_times_cuda_and_checks_agreement():
    from pvt.bench import Case, run_case

    case = Case("pvt_v2_b0", batch_size=4, dtype="bfloat16", device="cuda", channels_last=True)
    results = run_case(case, ("pvt", "timm"), warmup=2, repeats=3)
    by = {r.impl: r for r in results}
    assert by["pvt"].img_per_s > 0 and by["pvt"].peak_mem_mb > 0
    if "timm" in by:
        assert by["timm"].cosine >= 0.999


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_v1_tiny"])
def test_gpu_path_matches_plain_autocast(name):
    model = pvt.create_model(name, accelerate=True).cuda().eval().to(memory_format=torch.channels_last)
    slow = plain(copy.deepcopy(model))
    blk = model.stages[0].blocks[0]
    x = torch.randn(4, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    tokens = torch.randn(1, 4, blk.norm1.normalized_shape[0], device="cuda")
    with torch.inference_mode():
        exact, exact_feats = model(x), model.forward_pyramid(x)  # float32
        assert isinstance(blk.ops.pick(blk, tokens), GpuOps) is False and len(blk.ops.weight_cache) == 0
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert isinstance(blk.ops.pick(blk, tokens), GpuOps) is True
            fast, fast_feats = model(x).float(), model.forward_pyramid(x)
            ref, ref_feats = slow(x).float(), slow.forward_pyramid(x)
    # the GPU path ran: every block holds its bf16 weights
    assert all(("attn.q", torch.bfloat16) in b.ops.weight_cache for s in model.stages for b in s.blocks)
    assert ("proj", torch.bfloat16) in model.stages[0].patch_embed.ops.weight_cache
    # bf16 rounding moves these random-weight logits by ~1 %; the GPU path must be as close to float32
    # as plain autocast is
    assert _rel(fast, exact) <= 1.25 * _rel(ref, exact) + 1e-3, (_rel(fast, exact), _rel(ref, exact))
    assert F.cosine_similarity(fast.flatten(), exact.flatten(), dim=0).item() >= 0.999
    for f, r, e in zip(fast_feats, ref_feats, exact_feats):
        assert f.dtype == r.dtype == torch.float32  # features stay float32, as autocast's
        assert _rel(f, e) <= 1.25 * _rel(r, e) + 1e-3


def test_gpu_path_follows_weight_updates_and_is_off_for_training():
    model = pvt.create_model("pvt_v2_b0", accelerate=True).cuda().eval()
    slow = plain(copy.deepcopy(model))
    x = torch.randn(2, 3, 128, 128, device="cuda")
    tokens = torch.randn(1, 4, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        # autograd on: the plain modules run
        assert isinstance(model.stages[0].blocks[0].ops.pick(model.stages[0].blocks[0], tokens), GpuOps) is False
        with torch.inference_mode():
            before = model(x).float()
            sd = {k: v * 1.5 if v.dtype.is_floating_point else v for k, v in model.state_dict().items()}
            model.load_state_dict(sd)
            slow.load_state_dict(sd)
            after = model(x).float()
            ref = slow(x).float()
    assert _rel(after, before) > 0.1  # the cached casts were refreshed
    assert F.cosine_similarity(after.flatten(), ref.flatten(), dim=0).item() >= 0.999


def test_triton_layer_norm_matches_torch_on_cuda():
    from pvt.accel.kernels import triton_available, triton_layer_norm

    if not triton_available():
        pytest.skip("triton not installed")
    for cols in (32, 64, 150, 320, 512, 1024):
        x = torch.randn(64 * 3136 // cols, cols, device="cuda") * 3 + 1
        w, b = torch.randn(cols, device="cuda"), torch.randn(cols, device="cuda")
        ref = F.layer_norm(x, (cols,), w, b, 1e-6)
        assert (triton_layer_norm(x, w, b, 1e-6, torch.float32) - ref).abs().max().item() < 1e-4
        y16 = triton_layer_norm(x.bfloat16(), w, b, 1e-6, torch.bfloat16)
        assert y16.dtype == torch.bfloat16
        ref16 = F.layer_norm(x.bfloat16().float(), (cols,), w, b, 1e-6)
        assert (y16.float() - ref16).abs().max().item() <= 2**-7 * ref16.abs().max().item()
