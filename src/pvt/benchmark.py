"""Throughput, latency and peak memory of PVT models, side by side with timm and HF transformers.

Every implementation runs the *same* weights: ours are randomly initialised (or loaded) and converted
to timm's / transformers' layouts, so the comparison also checks that the outputs agree. Timings of
all implementations are interleaved in one loop (warm-up, then ``repeats`` rounds, median), so that
background load hits them alike; the ratios are the numbers to trust on a shared machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .model import PyramidVisionTransformer
from .registry import create_model
from .accel.runtime import page_faults

__all__ = [
    "Case",
    "Result",
    "IMPLS",
    "reference_model",
    "make_step",
    "time_interleaved",
    "peak_memory",
    "compare_outputs",
    "run_case",
    "format_results",
    "parse_size",
]

IMPLS = ("pvt", "timm", "hf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    model: str
    batch_size: int = 8
    size: tuple[int, int] = (224, 224)
    dtype: str = "float32"
    mode: str = "infer"  # "infer" or "train"
    device: str = "cpu"
    channels_last: bool = False


@dataclass
class Result:
    """Median figures of one implementation for one :class:`Case`."""

    impl: str
    model: str
    mode: str
    batch_size: int
    height: int
    width: int
    dtype: str
    device: str
    threads: int
    img_per_s: float
    latency_ms: float
    """Median wall time of one batch (one training step in ``train`` mode)."""
    latency_iqr_ms: float
    peak_mem_mb: float | None = None
    """Peak memory of one call beyond what was allocated before it (activations, gradients, optimiser
    state on the first step); ``None`` where not measured."""
    page_faults: float | None = None
    """Median minor page faults per timed call (CPU): new memory pages the call touched."""
    max_abs_diff: float | None = None
    """Largest logit difference to our float32 eval-mode output on the same input (``None`` for ours)."""
    cosine: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> ``(224, 224)``; ``"800x1333"`` -> ``(800, 1333)`` (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"input size {text!r} is not N or HxW (e.g. 224 or 800x1333)") from None
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise ValueError(f"input size {text!r} is not N or HxW with positive integers (e.g. 224 or 800x1333)")
    return (sizes[0], sizes[-1])


# --------------------------------------------------------------------- other implementations
def reference_model(impl: str, name: str, model: PyramidVisionTransformer) -> nn.Module:
    """timm's (``impl="timm"``) or transformers' (``"hf"``) implementation of ``name`` holding
    ``model``'s weights, in eval mode. Raises ValueError when that library lacks the variant."""
    from .weights.keys import to_hf_v2, to_timm

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if impl == "timm":
        import timm

        if name not in timm.list_models("pvt_v2*"):
            raise ValueError(f"timm has no {name!r}; it implements {', '.join(timm.list_models('pvt_v2*'))}")
        ref = timm.create_model(name, pretrained=False, num_classes=model.num_classes)
        ref.load_state_dict(to_timm(sd), strict=True)
    elif impl == "hf":
        from transformers import PvtV2Config, PvtV2ForImageClassification

        from .weights.hf_config import pvt_to_hf_config

        fields = pvt_to_hf_config(model.config)
        if fields.pop("model_type") != "pvt_v2":
            raise ValueError("the HF comparison covers PVT v2 models only")
        ref = _HFLogits(PvtV2ForImageClassification(PvtV2Config(**fields, num_labels=max(model.num_classes, 1))))
        ref.inner.load_state_dict(to_hf_v2(sd), strict=True)
    else:
        raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    return ref.eval()


class _HFLogits(nn.Module):
    """transformers' classifier returning the logits tensor, like ours and timm's."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(pixel_values=x).logits


# ------------------------------------------------------------------------------- steps
def _autocast(case: Case):
    if case.dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=case.device, dtype=DTYPES[case.dtype])


def make_step(model: nn.Module, case: Case, seed: int = 0) -> Callable[[], Any]:
    """A closure running one inference batch, or one training step (forward, cross-entropy,
    backward, AdamW step) in ``train`` mode, on fixed random inputs."""
    if case.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {case.dtype!r}; choose from {', '.join(DTYPES)}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch_size, 3, *case.size, generator=g).to(case.device)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if case.mode == "infer":
        model.eval()

        def infer() -> Tensor:
            with torch.inference_mode(), _autocast(case):
                return model(x)

        return infer
    if case.mode != "train":
        raise ValueError(f"unknown mode {case.mode!r}; choose from infer, train")
    model.train()
    num_classes = _num_classes(model)
    y = torch.randint(0, num_classes, (case.batch_size,), generator=g).to(case.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def train() -> Tensor:
        opt.zero_grad(set_to_none=True)
        with _autocast(case):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return train


def _num_classes(model: nn.Module) -> int:
    """Classifier outputs of ours, timm's (``num_classes``) or the HF wrapper (``config.num_labels``)."""
    inner = getattr(model, "inner", None)
    if inner is not None:
        return int(inner.config.num_labels)
    n = getattr(model, "num_classes", 0)
    return n if isinstance(n, int) and n > 0 else 1000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Callable[[], Any]],
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    faults: dict[str, list[int]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each step, measured round-robin: ``warmup`` untimed rounds, then
    ``repeats`` rounds in which every step runs once (order rotated each round). ``faults``, when
    given, receives each timed call's minor page faults per step."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            f0 = page_faults() if faults is not None else 0
            t0 = time.perf_counter()
            steps[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
            if faults is not None:
                faults.setdefault(n, []).append(page_faults() - f0)
    return times


def peak_memory(step: Callable[[], Any], device: str = "cpu") -> float:
    """Peak bytes allocated during one call of ``step`` beyond those live before it.

    CUDA: the allocator's peak statistic. CPU: replays the allocation events of the PyTorch profiler."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return float(peak)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Mute the profiler back-end's own start/stop lines, which it writes straight to file descriptor 2."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def compare_outputs(ours: nn.Module, other: nn.Module, case: Case, seed: int = 1) -> tuple[float, float]:
    """Max absolute logit difference and cosine similarity of ``other`` (in ``case.dtype``) against
    ``ours`` in float32, eval mode, on one random batch of ``case``'s size."""
    g = torch.Generator().manual_seed(seed)
    n = case.batch_size if case.device.startswith("cuda") else min(case.batch_size, 4)  # GPU: the timed shape
    x = torch.randn(n, 3, *case.size, generator=g).to(case.device)
    ours.eval()
    other.eval()
    with torch.inference_mode():
        ref = ours(x).float()
        with _autocast(case):
            out = other(x).float()
    diff = (out - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    return diff, cos


# ---------------------------------------------------------------------------- one case
def run_case(
    case: Case,
    impls: tuple[str, ...] = ("pvt",),
    *,
    warmup: int = 2,
    repeats: int = 5,
    memory: bool = True,
    compile: bool = False,
    compile_mode: str | None = None,
    model: PyramidVisionTransformer | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Result]:
    """Benchmark ``case`` for each implementation in ``impls`` (same weights, interleaved timing).

    ``compile=True`` adds ``"<impl>+compile"`` for ours and timm's: each model under
    ``torch.compile(mode=compile_mode)`` (compile time excluded from the timings, reported in ``extra`` as
    ``first_call_s``), so compiled ours is compared with compiled timm. Implementations that cannot be built (library missing, variant
    unsupported) are skipped with a message through ``log``."""
    say = log or (lambda s: None)
    ours = model if model is not None else create_model(case.model)
    ours = ours.to(case.device)
    if case.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    models: dict[str, nn.Module] = {}
    for impl in impls:
        if impl == "pvt":
            models["pvt"] = ours
            continue
        try:
            ref = reference_model(impl, case.model, ours).to(case.device)
        except (ImportError, ValueError) as e:
            say(f"skipping {impl}: {e}")
            continue
        models[impl] = ref.to(memory_format=torch.channels_last) if case.channels_last else ref
    extra: dict[str, dict[str, Any]] = {n: {} for n in models}
    if compile:
        import copy

        for name in [n for n in models if n in ("pvt", "timm")]:
            eager = models[name]
            models[f"{name}+compile"] = torch.compile(
                copy.deepcopy(eager) if case.mode == "train" else eager, mode=compile_mode
            )
            extra[f"{name}+compile"] = {"compile_mode": compile_mode or "default"}
    # training changes the weights: every implementation trains its own copy, compared first
    agree: dict[str, tuple[float, float]] = {}
    for name, m in models.items():
        if name != "pvt" or case.dtype != "float32":
            agree[name] = compare_outputs(ours, m, case)
    if case.mode == "train":
        import copy

        models = {n: (copy.deepcopy(m) if n in ("pvt",) else m) for n, m in models.items()}
    steps = {n: make_step(m, case) for n, m in models.items()}
    for n, s in steps.items():  # first call outside the timed rounds (compilation, allocator warm-up)
        t0 = time.perf_counter()
        s()
        _sync(case.device)
        extra[n]["first_call_s"] = round(time.perf_counter() - t0, 3)
    faults: dict[str, list[int]] = {}
    times = time_interleaved(steps, warmup=warmup, repeats=repeats, device=case.device, faults=faults)
    results = []
    threads = torch.get_num_threads()
    for n, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [med, med, med]
        mem = peak_memory(steps[n], case.device) / 2**20 if memory else None
        diff, cos = agree.get(n, (None, None))
        results.append(
            Result(
                impl=n,
                model=case.model,
                mode=case.mode,
                batch_size=case.batch_size,
                height=case.size[0],
                width=case.size[1],
                dtype=case.dtype,
                device=case.device,
                threads=threads,
                img_per_s=case.batch_size / med,
                latency_ms=med * 1e3,
                latency_iqr_ms=(q[2] - q[0]) * 1e3,
                peak_mem_mb=mem,
                page_faults=statistics.median(faults[n]) if case.device == "cpu" else None,
                max_abs_diff=diff,
                cosine=cos,
                extra=extra[n],
            )
        )
    return results


# ---------------------------------------------------------------------------- reporting
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _ours_for(impl: str) -> str:
    """The row a result is compared with: ``pvt`` for eager rows, ``pvt+compile`` for ``x+compile``."""
    _, plus, suffix = impl.partition("+")
    return "pvt" + plus + suffix


def format_results(results: list[Result]) -> str:
    """A plain-text table; ``ours/x`` is our throughput over implementation ``x``'s in the same case
    (compiled rows over our compiled row)."""
    header = (
        f"{'model':<14} {'mode':<5} {'impl':<12} {'dtype':<8} {'batch':>5} {'size':>9} "
        f"{'img/s':>8} {'ms/batch':>9} {'iqr ms':>7} {'peak MB':>8} {'faults':>7} "
        f"{'max|diff|':>9} {'cosine':>8} {'ours/x':>6}"
    )
    lines = [header, "-" * len(header)]
    rates = {(r.impl, r.model, r.mode, r.batch_size, r.height, r.width, r.dtype, r.device): r.img_per_s
             for r in results}
    for r in results:
        key = (r.model, r.mode, r.batch_size, r.height, r.width, r.dtype, r.device)
        ours = _ours_for(r.impl)
        ratio = rates.get((ours, *key), float("nan")) / r.img_per_s if r.impl != ours else None
        lines.append(
            f"{r.model:<14} {r.mode:<5} {r.impl:<12} {r.dtype:<8} {r.batch_size:>5} {f'{r.height}x{r.width}':>9} "
            f"{r.img_per_s:>8.2f} {r.latency_ms:>9.1f} {r.latency_iqr_ms:>7.1f} {_fmt(r.peak_mem_mb, '8.0f'):>8} "
            f"{_fmt(r.page_faults, '7.0f'):>7} "
            f"{_fmt(r.max_abs_diff, '9.2e'):>9} {_fmt(r.cosine, '8.6f'):>8} {_fmt(ratio, '6.2f'):>6}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------- onnxruntime
def run_onnxruntime(
    path: str,
    case: Case,
    *,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    model: nn.Module | None = None,
) -> list[Result]:
    """Throughput of an exported ONNX file in onnxruntime (CPU) at ``case``'s batch and size.

    ``model``: also time this PyTorch model (``impl="pvt"``) on the same input in the same interleaved
    loop, so that the table's ``ours/x`` compares the two from one run."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - dependency present in the test extra
        raise ValueError("the onnxruntime backend needs the onnxruntime package (pip install onnxruntime)") from e
    if case.dtype != "float32":
        raise ValueError(f"the onnxruntime backend runs the exported float32 graph; got dtype {case.dtype!r}")
    opts = ort.SessionOptions()
    n = threads or torch.get_num_threads()
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: not a loadable ONNX model ({e})") from None
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((case.batch_size, 3, *case.size), dtype=np.float32)
    steps: dict[str, Callable[[], Any]] = {}
    if model is not None:
        model = model.eval()
        xt = torch.from_numpy(x)

        def ours() -> Tensor:
            with torch.inference_mode():
                return model(xt)

        steps["pvt"] = ours
    steps["onnxruntime"] = lambda: sess.run(None, {name: x})
    faults: dict[str, list[int]] = {}
    times = time_interleaved(steps, warmup=warmup, repeats=repeats, faults=faults)
    results = []
    for impl, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [med, med, med]
        results.append(
            Result(
                impl=impl,
                model=case.model,
                mode="infer",
                batch_size=case.batch_size,
                height=case.size[0],
                width=case.size[1],
                dtype="float32",
                device="cpu",
                threads=n,
                img_per_s=case.batch_size / med,
                latency_ms=med * 1e3,
                latency_iqr_ms=(q[2] - q[0]) * 1e3,
                page_faults=statistics.median(faults[impl]),
                extra={"onnx": str(path)} if impl == "onnxruntime" else {},
            )
        )
    return results
