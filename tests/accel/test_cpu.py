"""pvt.accel on the CPU: the fused path runs where it may (and only there), computes what the plain
model computes, batches in pieces, gets out of the way of hooks, and leaves the model's identity alone."""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import pvt
from pvt.accel import Acceleration, WeightCache, accelerate, cpu, is_accelerated, plain
from pvt.accel.modules import AcceleratedPyramidVisionTransformer
from pvt.accel.record import DEFAULT_PIECE_BYTES
from pvt.layers import Block, PatchEmbed
from pvt.models.model import PVTStage, PyramidVisionTransformer
from pvt.models.variants import get_variant

TINY = dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 5, 8), num_classes=7)
FUSED = {"mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise"}


def tiny(name: str, **kw) -> PyramidVisionTransformer:
    """A plain few-channel model of variant ``name`` (random weights), in eval mode."""
    return PyramidVisionTransformer(get_variant(name).config.replace(**TINY, **kw)).eval()


def pair(model: PyramidVisionTransformer, **accel) -> tuple[PyramidVisionTransformer, PyramidVisionTransformer]:
    """``model`` (plain) and an accelerated copy with the same weights."""
    return model, accelerate(copy.deepcopy(model), **accel)


def path(module: nn.Module, x: torch.Tensor) -> str | None:
    """Which operations a call of ``module`` on ``x`` takes now: "cpu" (the fused ones) or None (plain)."""
    return "cpu" if isinstance(module.ops.pick(module, x), cpu.CpuOps) else None


def ops_run(fn) -> set[str]:
    """Names of the operators ``fn()`` ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_the_cpu_path_is_taken_only_where_it_may_be():
    blk = accelerate(tiny("pvt_v2_b0")).stages[0].blocks[0]
    x = torch.randn(1, 4, 16)
    fused_bf16 = blk.ops.record.bf16_fused

    with torch.no_grad():
        assert path(blk, x) == "cpu"
        assert path(blk, x.double()) is None and path(blk, x.bfloat16()) is None
        assert path(blk, nn.Parameter(x)) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 CPU path (tests/accel/test_bf16.py)
            expected = "cpu" if fused_bf16 else None  # else the plain modules under autocast
            assert path(blk, x) == expected and path(blk, x.bfloat16()) == expected
        with torch.autocast("cpu", dtype=torch.float16):
            assert path(blk, x) is None
        blk.train()
        assert path(blk, x) is None  # training mode: dropout and drop path may draw, the plain path
        blk.eval()
        assert path(blk, x) == "cpu"
        off = accelerate(tiny("pvt_v2_b0"), cpu=False).stages[0].blocks[0]
        assert path(off, x) is None
    assert path(blk, x) is None  # autograd on
    with torch.inference_mode():
        assert path(blk, x) == "cpu"


CASES = [
    ("pvt_v2_b0", {}),
    ("pvt_v2_b2_li", {}),
    ("pvt_v1_tiny", {}),
    ("pvt_v2_b0", dict(qkv_bias=False)),
    ("pvt_v1_tiny", dict(overlap_patch_embed=True)),
    ("pvt_v1_tiny", dict(conv_ffn=True)),  # class token beside the depth-wise convolution
    ("pvt_v1_tiny", dict(linear_sra=True)),
    ("pvt_v2_b0", dict(pos_embed=True, cls_token=True)),
]


@pytest.mark.parametrize("name,switches", CASES, ids=[f"{n}-{'-'.join(s) or 'stock'}" for n, s in CASES])
@pytest.mark.parametrize("size", [(67, 93), (128, 96)])
def test_accelerated_equals_plain_and_runs_the_fused_kernels(name, switches, size, monkeypatch):
    monkeypatch.setattr(cpu, "mkl_rows", lambda: 0)  # every product on oneDNN (the MKL route: below)
    ref, fast = pair(tiny(name, **switches))
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        ref_logits, ref_maps = ref(x), ref.forward_pyramid(x)
        logits, maps = fast(x), fast.forward_pyramid(x)
        fused = {"mkldnn::_linear_pointwise"} | ({"mkldnn::_convolution_pointwise"} if ref.config.conv_ffn else set())
        assert fused <= ops_run(lambda: fast(x))  # the accelerated path ran
        assert not FUSED & ops_run(lambda: ref(x))
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    for a, b in zip(maps, ref_maps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,switches", [("pvt_v2_b2_li", {}), ("pvt_v1_tiny", {}), ("pvt_v2_b0", dict(cls_token=True))])
def test_products_of_few_rows_on_mkl_equal_plain(name, switches, monkeypatch):
    # AVX2 CPUs run the late stages' float32 products on MKL's addmm (cpu.MKL_ROWS); forced here on any CPU
    ref, fast = pair(tiny(name, **switches))
    x = torch.randn(2, 3, 64, 64)  # stage 1: 2 x 256 token rows, stage 4: 2 x 4
    with torch.inference_mode():
        expected = ref(x)
        monkeypatch.setattr(cpu, "mkl_rows", lambda: 10**9)
        everything = fast(x), ops_run(lambda: fast(x))
        monkeypatch.setattr(cpu, "mkl_rows", lambda: 2 * 64)  # every stage but the first
        late, late_ops = fast(x), ops_run(lambda: fast(x))
    gelu_fc1 = name == "pvt_v1_tiny"  # v1's fc1 + GELU stays one oneDNN pass; b2_li's ReLU goes after addmm
    assert ("mkldnn::_linear_pointwise" in everything[1]) == gelu_fc1 and "aten::addmm" in everything[1]
    assert {"mkldnn::_linear_pointwise", "aten::addmm"} <= late_ops
    for out in (everything[0], late):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["pvt_v2_b2_li", "pvt_v2_b0"])
def test_float32_calls_convert_nothing_and_run_one_fused_op_per_linear_layer(name, monkeypatch):
    # The bf16 / int8 plumbing must cost float32 nothing but Python: every linear layer one oneDNN
    # op on its own parameters (no cast or copy in the weight cache), no dtype conversion of any tensor
    # (docs/speed.md, "The deployment merge's float32 cost").
    monkeypatch.setattr(cpu, "mkl_rows", lambda: 0)
    fast = accelerate(tiny(name))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fast(x)  # the cached weight layouts are made here
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fast(x)
    blocks = [blk for stage in fast.stages for blk in stage.blocks]
    stacked = sum(blk.attn.sr is None for blk in blocks)  # q, k and v in one product
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts["mkldnn::_linear_pointwise"] == 5 * len(blocks) - stacked
    conversions = [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy"]
    assert all(shape == [] for shape in conversions), conversions  # scalars only
    for blk in blocks:
        for layer in ("attn.q", "attn.kv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            assert (layer, torch.float32) not in blk.ops.weight_cache and layer not in blk.ops.weight_cache


def test_full_size_b0_matches_timm():
    timm = pytest.importorskip("timm")
    from pvt.weights.keys import to_timm

    model = pvt.create_model("pvt_v2_b0", accelerate=True).eval()
    assert isinstance(model.acceleration, Acceleration)
    ref = timm.create_model("pvt_v2_b0", pretrained=False).eval()
    ref.load_state_dict(to_timm(model.state_dict()))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff < 1e-4


def test_batches_run_in_pieces_with_per_sample_results(monkeypatch):
    ref, fast = pair(tiny("pvt_v2_b0"), chunk_bytes=768 * 1024)
    whole = accelerate(copy.deepcopy(ref), chunk_bytes=0)
    x = torch.randn(5, 3, 64, 96)
    # stage-1 hidden activation of one 64x96 image: 16*24*128 floats = 192 KiB; 5 images in 768 KiB pieces
    assert cpu.piece_size(fast, 5, 64, 96, 768 * 1024) == 3
    assert cpu.piece_size(fast, 5, 64, 96, 384 * 1024) == 2
    assert cpu.piece_size(fast, 5, 64, 96, 0) is None and cpu.piece_size(fast, 1, 64, 96, 1) is None
    calls = []
    plain_forward_tokens = PyramidVisionTransformer.forward_tokens
    monkeypatch.setattr(
        PyramidVisionTransformer, "forward_tokens", lambda self, t: calls.append(len(t)) or plain_forward_tokens(self, t)
    )
    with torch.inference_mode():
        pieces, piece_maps = fast(x), fast.forward_pyramid(x)
        assert calls == [3, 2, 3, 2]
        calls.clear()
        whole_out, whole_maps = whole(x), whole.forward_pyramid(x)
        ref_out = ref(x)
        assert calls == [5, 5, 5]
        single = torch.cat([fast(x[i : i + 1]) for i in range(5)])
    assert pieces.shape == (5, 7)
    torch.testing.assert_close(pieces, whole_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(pieces, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(single, whole_out, rtol=0, atol=1e-5)
    for a, b in zip(piece_maps, whole_maps):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        fast.train()(x)  # training mode: the plain forward, whole batch
    fast.eval()(x)  # autograd on: the plain forward, whole batch
    assert calls == [5, 5]


def test_piece_budget_follows_the_allocator(monkeypatch):
    from pvt.accel import runtime

    model = pvt.create_model("pvt_v2_b0", accelerate=True).eval()
    auto = model.acceleration
    assert auto == Acceleration(cpu=True, gpu=True, chunk_bytes=None)
    monkeypatch.setattr(runtime, "_mode", "default")
    assert auto.piece_budget() == DEFAULT_PIECE_BYTES == 16 * 2**20
    assert repr(auto) == "Acceleration(cpu=True, gpu=True, cpu_pieces=auto (now 16 MiB))"
    x = torch.empty(8, 3, 224, 224)
    # B0's stage-1 hidden at 224: 3136 x 256 floats = 3.06 MiB per image, 24.5 MiB for the batch
    assert cpu.piece_size(model, 8, 224, 224, auto.piece_budget()) == 4
    monkeypatch.setattr(runtime, "_mode", "tuned")
    assert auto.piece_budget() == runtime.MMAP_THRESHOLD == 32 * 2**20
    assert cpu.piece_size(model, 8, 224, 224, auto.piece_budget()) is None
    with torch.inference_mode():
        assert model._cpu_call(x) == (True, None)
        monkeypatch.setattr(runtime, "_mode", "default")
        assert model._cpu_call(x) == (True, 4)
    assert Acceleration(chunk_bytes=0).piece_budget() == 0
    assert "whole batches" in repr(Acceleration(chunk_bytes=0)) and "off" in repr(Acceleration(cpu=False))


def test_hooks_see_every_layer_of_an_accelerated_model():
    ref, fast = pair(tiny("pvt_v1_tiny", conv_ffn=True), chunk_bytes=1)  # pieces of one image
    x = torch.randn(3, 3, 64, 64)

    def seen(model, register) -> list[tuple[str, tuple[int, ...]]]:
        names = {m: n for n, m in model.named_modules()}
        log: list[tuple[str, tuple[int, ...]]] = []
        handles = [register(m, lambda mod, args, *out: log.append((names[mod], tuple(args[0].shape)))) for m in names]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return log

    for register in (nn.Module.register_forward_hook, nn.Module.register_forward_pre_hook):
        expected = seen(ref, register)
        assert seen(fast, register) == expected  # every layer, whole batches
    # one hook on one layer: that block takes its plain path, the others stay fused
    q = fast.stages[1].blocks[0].attn.q
    handle = q.register_forward_hook(lambda *a: None)
    with torch.no_grad():
        assert path(fast.stages[1].blocks[0], torch.randn(1, 4, 32)) is None
        assert path(fast.stages[0].blocks[0], torch.randn(1, 4, 16)) == "cpu"
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)
    handle.remove()
    # a global module hook
    log = []
    handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: log.append(type(mod).__name__))
    try:
        with torch.no_grad():
            fast(x[:1])
    finally:
        handle.remove()
    assert log.count("Linear") == sum(isinstance(m, nn.Linear) for m in fast.modules())


def test_flop_counts_are_those_of_the_plain_model():
    from pvt.tools.flops import count_flops

    ref, fast = pair(tiny("pvt_v2_b2_li"))
    for device in (None, "cpu"):  # on meta, and a real forward pass
        a, b = count_flops(fast, 96, device=device), count_flops(ref, 96, device=device)
        assert (a.flops, a.by_type) == (b.flops, b.by_type)


def test_plain_restores_the_exact_plain_model():
    model = tiny("pvt_v1_tiny")
    classes = {n: type(m) for n, m in model.named_modules()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    accelerate(model)
    assert type(model) is AcceleratedPyramidVisionTransformer and is_accelerated(model)
    assert all(isinstance(b.ops.weight_cache, WeightCache) for s in model.stages for b in s.blocks)
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    accelerate(model, cpu=False)  # again, other settings: the record is replaced, not added to
    assert model.acceleration.cpu is False and not is_accelerated(model.stages[0])
    with_ops = [m for m in model.modules() if "ops" in vars(m)]
    assert len(with_ops) == 4 * 3 and all(m.ops.record is model.acceleration for m in with_ops)  # stage, embed, block
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert plain(model) is model
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    assert [id(p) for p in model.parameters()] == params
    for module, cls in ((model, PyramidVisionTransformer), (model.stages[0], PVTStage),
                        (model.stages[0].blocks[0], Block), (model.stages[0].patch_embed, PatchEmbed)):
        assert type(module) is cls and type(module).forward is cls.forward
    assert plain(model) is model  # plain stays plain
    with pytest.raises(TypeError, match="PyramidVisionTransformer"):
        accelerate(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="chunk_bytes"):
        accelerate(model, chunk_bytes=-1)


def test_create_model_gives_the_plain_model_and_accelerates_when_asked():
    model = pvt.create_model("pvt_v2_b0", num_classes=3)  # the model one trains
    assert type(model) is PyramidVisionTransformer and not hasattr(model, "acceleration")
    assert all("ops" not in vars(m) for m in model.modules()) and not is_accelerated(model)
    assert model.stages[0].blocks[0].ops is pvt.layers.PLAIN
    fast = pvt.create_model("pvt_v2_b0", num_classes=3, accelerate=True)
    assert is_accelerated(fast) and type(plain(fast)) is PyramidVisionTransformer
    assert pvt.accelerate is accelerate


def test_the_fused_and_cuda_paths_supply_operations_not_a_second_block():
    """The block's dataflow is written once (pvt.layers); the accelerated paths define only operations."""
    from pvt.accel import gpu, modules
    from pvt.layers import PLAIN, Ops

    names = {n for n in vars(Ops) if not n.startswith("_")}
    assert names == {"pick", "norm", "linear", "conv", "q_kv", "output", "residual"}
    for ops in (cpu.CpuOps, gpu.GpuOps, modules.AcceleratedOps):
        assert issubclass(ops, Ops) and not issubclass(ops, nn.Module)
        own = {n for n in vars(ops) if not n.startswith("_") and callable(vars(ops)[n])}
        assert own <= names, own - names  # operations (and pick), nothing block-shaped
    for module in (cpu, gpu, modules):  # no piece of the dataflow: attention core, maps, residuals
        source = inspect.getsource(module)
        for piece in ("attend(", ".reduce(", "on_map(", "map_part(", "as_map(", "as_tokens(", "drop_path(", ".mlp("):
            assert piece not in source, (module.__name__, piece)
    accelerated = accelerate(tiny("pvt_v2_b0"))
    # every module class stays the plain one (the model aside: pieces); only ``ops`` differs
    assert {type(m) for m in accelerated.modules()} - {AcceleratedPyramidVisionTransformer} == \
        {type(m) for m in tiny("pvt_v2_b0").modules()} - {PyramidVisionTransformer}
    assert AcceleratedPyramidVisionTransformer.forward_tokens is PyramidVisionTransformer.forward_tokens
    assert all(m.ops is not PLAIN for m in accelerated.modules() if isinstance(m, (Block, PatchEmbed, PVTStage)))


def test_import_pvt_loads_no_acceleration_code():
    code = "import sys, pvt; print(sorted(m for m in sys.modules if m.startswith('pvt.accel')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_state_dict_deepcopy_and_pickle_of_an_accelerated_model():
    model = accelerate(tiny("pvt_v2_b0"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)  # fills the caches
    blk = model.stages[3].blocks[0]
    assert len(blk.ops.weight_cache) == 1 and len(model.stages[0].patch_embed.ops.weight_cache) == 1  # stacked q/kv; conv
    assert set(model.state_dict()) == set(tiny("pvt_v2_b0").state_dict())
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    unpickled = pickle.loads(pickle.dumps(model))
    for other in (twin, loaded, unpickled):
        assert type(other.stages[3].blocks[0]) is type(blk) and other.acceleration == model.acceleration
        assert len(other.stages[3].blocks[0].ops.weight_cache) == 0  # caches are not copied
        assert other.stages[3].blocks[0].ops.record is other.acceleration  # one record, copied once
        with torch.no_grad():
            torch.testing.assert_close(other(x), out, rtol=0, atol=0)
    fresh = pickle.dumps(accelerate(tiny("pvt_v2_b0")))
    assert abs(len(pickle.dumps(model)) - len(fresh)) < 1024  # no cached tensors in the pickle
    back = tiny("pvt_v2_b0")
    back.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), out, rtol=0, atol=1e-5)


def test_cached_weights_follow_load_state_dict_and_in_place_updates():
    ref, fast = pair(tiny("pvt_v2_b0"))
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        before = fast(x)
        for p in fast.parameters():  # in place, as an optimiser step
            p.mul_(1.1)
        after = fast(x)
        ref.load_state_dict(fast.state_dict())
        torch.testing.assert_close(after, ref(x), rtol=0, atol=1e-5)
        assert (after - before).abs().max() > 1e-3
        attn = fast.stages[3].blocks[0].attn  # the stacked q/kv weight of the full-map GEMM
        attn.kv.weight.mul_(1.5)
        attn.q.bias.add_(0.1)
        sd = {k: v * 0.9 for k, v in fast.state_dict().items()}
        ref.load_state_dict(sd)
        fast.load_state_dict(sd)
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)
        fast.load_state_dict({k: v * 1.2 for k, v in sd.items()}, assign=True)  # new tensors
        ref.load_state_dict({k: v * 1.2 for k, v in sd.items()})
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)


def test_channels_last_input():
    ref, fast = pair(tiny("pvt_v2_b0"))
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), ref(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["pvt_v2_b2_li", "pvt_v1_tiny"])
def test_training_gives_the_plain_gradients(name):
    ref, fast = pair(tiny(name, drop_path_rate=0.0))
    x, y = torch.randn(2, 3, 64, 80), torch.tensor([1, 4])
    grads = []
    for model in (ref, fast):
        model.train()
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        assert g is not None and torch.equal(g, grads[1][n]), n
    with torch.no_grad():
        torch.testing.assert_close(fast(x), fast.eval()(x), rtol=0, atol=1e-5)  # train mode, no dropout


def test_stochastic_training_keeps_the_plain_path():
    model = accelerate(tiny("pvt_v2_b0", drop_path_rate=0.5).train())
    x = torch.randn(4, 3, 64, 64)
    blocks = [b for s in model.stages for b in s.blocks]
    with torch.no_grad():
        a, b = model(x), model(x)
        tokens = torch.randn(1, 4, 16)
        assert [path(blk, tokens) for blk in blocks[:2]] == [None, None]  # training mode
        assert [blk.drop_path.p if hasattr(blk.drop_path, "p") else 0 for blk in blocks[:2]] == [0, pytest.approx(1 / 6)]
    assert not torch.equal(a, b)  # drop path still active under no_grad in train mode


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v1_tiny"])
def test_bfloat16_autocast_is_close(name):
    model = accelerate(tiny(name))
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert F.cosine_similarity(low.flatten(), ref.flatten(), dim=0).item() >= 0.999


def test_tracing_and_compiling_take_the_plain_path():
    import torch._dynamo as dynamo

    ref, fast = pair(tiny("pvt_v1_tiny"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(fast, x, check_trace=False)
        assert "mkldnn" not in str(traced.inlined_graph)
        assert traced(torch.randn(3, 3, 64, 64)).shape == (3, 7)
        program = torch.export.export(fast, (x,))
        assert "mkldnn" not in str(program.graph)
        torch.testing.assert_close(program.module()(x), ref(x), rtol=0, atol=1e-5)
        explained = dynamo.explain(fast)(x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_a_model_copied_under_inference_mode_runs():
    """Parameters made under inference_mode are inference tensors without a version counter: the weight
    cache keys them by storage alone."""
    ref = tiny("pvt_v2_b0")
    fast = accelerate(copy.deepcopy(ref))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        copied = copy.deepcopy(fast)
        assert next(copied.parameters()).is_inference()
        torch.testing.assert_close(copied(x), ref(x), rtol=0, atol=1e-5)


def picks(monkeypatch) -> list[tuple[str, str, bool]]:
    """Record of every ``AcceleratedOps.pick`` from now on: (module class, operations class, whether the
    model's call had decided the path)."""
    from pvt.accel import modules

    log: list[tuple[str, str, bool]] = []
    original = modules.AcceleratedOps.pick

    def pick(self, module, x):
        decided = modules._DECIDED.call is not None
        ops = original(self, module, x)
        log.append((type(module).__name__, type(ops).__name__, decided))
        return ops

    monkeypatch.setattr(modules.AcceleratedOps, "pick", pick)
    return log


def test_the_model_call_decides_once_and_modules_still_test_their_own_state(monkeypatch):
    ref, fast = pair(tiny("pvt_v2_b0"))
    x = torch.randn(1, 3, 64, 64)
    log = picks(monkeypatch)
    with torch.inference_mode():
        fast(x)
    # every block and patch embedding of the call took the fused operations the call decided
    assert {(m, o) for m, o, _ in log if m != "PVTStage"} == {("Block", "CpuOps"), ("PatchEmbed", "CpuOps")}
    assert all(decided for *_, decided in log) and len(log) == 12
    from pvt.accel.modules import _DECIDED

    assert _DECIDED.call is None  # only for the length of the call
    # a module called on its own tests everything itself
    log.clear()
    blk = fast.stages[0].blocks[0]
    with torch.inference_mode():
        assert path(blk, torch.randn(1, 4, 16)) == "cpu"
    blk.train()  # a module in training mode inside an evaluating model: plain, though the call decided
    log.clear()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)
    assert ("Block", "Ops", True) in log and ("Block", "CpuOps", True) in log
    blk.eval()


def test_hooks_registered_between_and_during_calls_are_honoured():
    ref, fast = pair(tiny("pvt_v2_b0"))
    x = torch.randn(1, 3, 64, 64)
    seen = []
    with torch.inference_mode():
        fast(x)
        late = fast.stages[3].blocks[0].attn.q
        handle = late.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)
        assert len(seen) == 1  # registered between two calls: the layer ran as itself
        handle.remove()
        seen.clear()

        def register(mod, args):  # during a call: a hook on stage 1 registers one on stage 3's q
            late.register_forward_hook(lambda mod, args, out: seen.append(out.shape))

        handle = fast.stages[1].register_forward_pre_hook(register)
        fast(x)
        handle.remove()
        assert len(seen) == 1


def test_float32_convolutions_run_weights_packed_once_per_input_shape(monkeypatch):
    ref, fast = pair(tiny("pvt_v1_tiny"))  # no depth-wise convolution: every convolution is a packed one
    embed = fast.stages[0].patch_embed
    with torch.inference_mode():
        for size in (64, 72, 64):
            x = torch.randn(1, 3, size, size)
            assert "aten::mkldnn_convolution" not in ops_run(lambda: fast(x))
            assert "mkldnn::_convolution_pointwise" in ops_run(lambda: fast(x))
            torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)
        packs = embed.ops.weight_cache.get(("proj", "packed"), (embed.proj.weight,), dict)
        assert sorted(s[-1] for s in packs) == [64, 72]  # one per input shape, reused
        monkeypatch.setattr(cpu, "_PACKED_SHAPES", 2)
        fast(torch.randn(1, 3, 80, 80))
        assert [s[-1] for s in packs] == [80]  # a model fed many sizes starts over, no unbounded growth
    with torch.no_grad():
        embed.proj.weight.mul_(2)  # a changed weight is packed again
        ref.stages[0].patch_embed.proj.weight.mul_(2)
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)
