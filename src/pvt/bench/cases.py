"""Benchmark cases: what one case is (:class:`Case`), the step it times (inference batch or training
step), running it for ours and the peer implementations (:func:`run_case`), and the results table.

Every implementation of a case runs the *same* weights: ours are randomly initialised (or given) and
converted to timm's / transformers' layouts (:mod:`.peers`), so the comparison also checks that the
outputs agree. The timings of all implementations are interleaved in one loop (:mod:`.timing`), so the
``ours/x`` ratios are the numbers to trust on a shared machine.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..accel.apply import accelerate_all
from ..base.constants import MAX_IMG_SIZE
from ..dense.zoo import DENSE_MODELS, create_dense_model
from ..models.model import PyramidVisionTransformer
from ..models.registry import create_model
from .peers import num_classes, reference_model
from .timing import median_and_iqr, peak_memory, sync, time_interleaved

__all__ = [
    "DTYPES",
    "Case",
    "Result",
    "parse_size",
    "is_dense",
    "build_model",
    "make_step",
    "compare_outputs",
    "run_case",
    "format_results",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Compute dtypes a case can ask for; bfloat16 runs under ``torch.autocast``."""


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

    @classmethod
    def from_times(cls, impl: str, case: Case, seconds: list[float], threads: int, **measured: Any) -> Result:
        """The result of ``impl`` on ``case`` from its timed calls (seconds per batch); ``measured`` sets
        the optional fields (``peak_mem_mb``, ``page_faults``, ...)."""
        med, iqr = median_and_iqr(seconds)
        return cls(
            impl=impl,
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
            latency_iqr_ms=iqr * 1e3,
            **measured,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> ``(224, 224)``; ``"800x1333"`` -> ``(800, 1333)`` (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"input size {text!r} is not N or HxW (e.g. 224 or 800x1333)") from None
    if len(sizes) not in (1, 2) or min(sizes) <= 0 or max(sizes) > MAX_IMG_SIZE:
        raise ValueError(f"input size {text!r} is not N or HxW with integers 1..{MAX_IMG_SIZE} (e.g. 224 or 800x1333)")
    return (sizes[0], sizes[-1])


def is_dense(name: str) -> bool:
    """Whether ``name`` is a dense-prediction model of :mod:`pvt.dense` (timed as a whole: backbone, neck,
    head and the detectors' post-processing)."""
    return name in DENSE_MODELS


def build_model(case: Case) -> nn.Module:
    """The model ``case`` times, with random weights: a classifier, or a dense model whose detector
    transform keeps the case's size (no resize to the 800 px training scale); accelerated for inference."""
    if not is_dense(case.model):
        model = create_model(case.model)
        return accelerate_all(model) if case.mode == "infer" else model
    model = create_dense_model(case.model)
    if case.mode == "infer":
        accelerate_all(model)
    transform = getattr(model, "transform", None)
    if transform is not None and hasattr(transform, "min_size"):
        transform.min_size, transform.max_size = (min(case.size),), max(case.size)
    return model


# ------------------------------------------------------------------------------- steps
def _autocast(case: Case):
    if case.dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=case.device, dtype=DTYPES[case.dtype])


def make_step(model: nn.Module, case: Case, seed: int = 0) -> Callable[[], Any]:
    """A closure running one inference batch, or one training step in ``train`` mode (the recipe's
    mixup / cutmix and label smoothing, forward, backward, AdamW step: :func:`_train_step`), on fixed
    random inputs."""
    if case.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {case.dtype!r}; choose from {', '.join(DTYPES)}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch_size, 3, *case.size, generator=g).to(case.device)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if case.mode == "infer" and getattr(model, "task", None) in ("detection", "instance"):
        model.eval()
        images = list(torch.rand(case.batch_size, 3, *case.size, generator=g).to(case.device))  # [0, 1] pixels

        def detect() -> Any:
            with torch.inference_mode(), _autocast(case):
                return model(images)

        return detect
    if case.mode == "infer":
        model.eval()

        def infer() -> Tensor:
            with torch.inference_mode(), _autocast(case):
                return model(x)

        return infer
    if case.mode != "train":
        raise ValueError(f"unknown mode {case.mode!r}; choose from infer, train")
    return _train_step(model, case, x, g)


def _train_step(model: nn.Module, case: Case, x: Tensor, g: torch.Generator) -> Callable[[], Tensor]:
    """One training step of the classification recipe's pieces (``pvt train``'s ``imagenet`` preset,
    :data:`pvt.tasks.classification.PRESETS`): mixup / cutmix with label smoothing (plain label smoothing on
    an odd batch, which mixup cannot pair), forward, backward, AdamW over the trainer's parameter groups."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from ..engine.trainer import param_groups
    from ..tasks.classification import PRESETS

    recipe = PRESETS["imagenet"]
    model.train()
    classes = num_classes(model)
    y = torch.randint(0, classes, (case.batch_size,), generator=g).to(case.device)
    opt = torch.optim.AdamW(param_groups(model, recipe["weight_decay"]), lr=1e-4, eps=recipe["opt_eps"])
    mix = None
    if case.batch_size % 2 == 0 and (recipe["mixup"] > 0 or recipe["cutmix"] > 0):
        mix = Mixup(mixup_alpha=recipe["mixup"], cutmix_alpha=recipe["cutmix"], prob=recipe["mixup_prob"],
                    switch_prob=recipe["mixup_switch_prob"], mode="batch", label_smoothing=recipe["smoothing"],
                    num_classes=classes)
    loss_fn = SoftTargetCrossEntropy() if mix is not None else LabelSmoothingCrossEntropy(recipe["smoothing"])

    def train() -> Tensor:
        images, targets = mix(x.clone(), y) if mix is not None else (x, y)  # mixup mixes in place
        opt.zero_grad(set_to_none=True)
        with _autocast(case):
            loss = loss_fn(model(images).float(), targets)
        loss.backward()
        opt.step()
        return loss.detach()

    return train


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
    ``first_call_s``), so compiled ours is compared with compiled timm. Implementations that cannot be
    built (library missing, variant unsupported) are skipped with a message through ``log``."""
    say = log or (lambda s: None)
    if is_dense(case.model) and (case.mode != "infer" or impls != ("pvt",) or compile):
        raise ValueError(f"{case.model}: dense models are timed for inference of ours alone (no --mode train, "
                         "--compare or --compile)")
    ours = model if model is not None else build_model(case)
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
        models = {n: (copy.deepcopy(m) if n in ("pvt",) else m) for n, m in models.items()}
    steps = {n: make_step(m, case) for n, m in models.items()}
    for n, s in steps.items():  # first call outside the timed rounds (compilation, allocator warm-up)
        t0 = time.perf_counter()
        s()
        sync(case.device)
        extra[n]["first_call_s"] = round(time.perf_counter() - t0, 3)
    faults: dict[str, list[int]] = {}
    times = time_interleaved(steps, warmup=warmup, repeats=repeats, device=case.device, faults=faults)
    results = []
    threads = torch.get_num_threads()
    for n, ts in times.items():
        diff, cos = agree.get(n, (None, None))
        results.append(
            Result.from_times(
                n,
                case,
                ts,
                threads,
                peak_mem_mb=peak_memory(steps[n], case.device) / 2**20 if memory else None,
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
    w = max([14] + [len(r.model) for r in results])
    header = (
        f"{'model':<{w}} {'mode':<5} {'impl':<12} {'dtype':<8} {'batch':>5} {'size':>9} "
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
            f"{r.model:<{w}} {r.mode:<5} {r.impl:<12} {r.dtype:<8} {r.batch_size:>5} {f'{r.height}x{r.width}':>9} "
            f"{r.img_per_s:>8.2f} {r.latency_ms:>9.1f} {r.latency_iqr_ms:>7.1f} {_fmt(r.peak_mem_mb, '8.0f'):>8} "
            f"{_fmt(r.page_faults, '7.0f'):>7} "
            f"{_fmt(r.max_abs_diff, '9.2e'):>9} {_fmt(r.cosine, '8.6f'):>8} {_fmt(ratio, '6.2f'):>6}"
        )
    return "\n".join(lines)
