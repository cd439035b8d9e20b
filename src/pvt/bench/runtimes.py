"""Inference runtimes side by side, each in its own process: ours (float32 / bfloat16 / int8), our plain
model under ``torch.compile`` (``compile``: Inductor, freezing on; its compile time reported per process),
timm and HF transformers (float32, bf16 autocast, timm also PyTorch's dynamic int8), ONNX Runtime (our ONNX
file, float32 and its ``quantize_dynamic`` int8) and OpenVINO (our ONNX file in float32 and bf16, and its
own int8 of it through NNCF). In ``train`` mode: one training step (:func:`pvt.bench.cases.make_step`) of
ours, timm's and HF's, float32 or under bf16 autocast.

Why processes: a runtime's idle worker threads keep spinning after a call (OpenMP's and ONNX
Runtime's wait policies), so whatever runs next in the same process competes with them; and one
model's heap becomes the next one's. Here every (runtime, precision) runs alone in a fresh process:
warm-up calls, then ``repeats`` timed calls; ``rounds`` such processes per runner, the runners
alternating (order rotated each round), and the reported figure is the median over every timed call.

All runners hold the same random weights (ours, converted to the peers' layouts, and exported to ONNX
once per model), and each writes its logits on the timed input, so every row also says how far it is
from our float32 output (``cosine``, ``max|diff|``).

Busy machines: ``busy_cores`` starts that many processes spinning on a core each for the whole run,
and ``wait_policy`` sets ``OMP_WAIT_POLICY`` in the runners' environment (``passive`` / ``active``), or
``spin=N`` sets ``GOMP_SPINCOUNT=N`` (GNU OpenMP, PyTorch's: spin N times at a barrier, then sleep; its
default is 300 000). Both must be set before OpenMP starts, so only a fresh process can change them.
A runner of ``threads=0`` (``auto``, the command's default) takes the cores that are free when its process
starts (:func:`pvt.base.cores.free_cores`: the process's cores less those other work, busy cores included,
kept busy over 0.1 s), as the ``pvt`` command does; the chosen count is reported per round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cases import Case, Result

__all__ = [
    "RUNTIMES",
    "Runner",
    "runners_for",
    "available",
    "prepare",
    "run_runner",
    "benchmark_runtimes",
    "busy_cores",
    "wait_policy_env",
    "format_runtime_results",
]

RUNTIMES: dict[str, tuple[str, ...]] = {
    "pvt": ("float32", "bfloat16", "int8"),
    "compile": ("float32",),
    "timm": ("float32", "bfloat16", "int8"),
    "hf": ("float32", "bfloat16"),
    "onnxruntime": ("float32", "int8"),
    "openvino": ("float32", "bfloat16", "int8"),
}
"""Runtime -> the precisions its runner offers (inference)."""

TRAIN_RUNTIMES: dict[str, tuple[str, ...]] = {"pvt": ("float32", "bfloat16"), "timm": ("float32", "bfloat16"),
                                              "hf": ("float32", "bfloat16")}
"""Runtime -> the precisions of its training step (bfloat16: CPU autocast)."""

_MODULES = {"pvt": "torch", "compile": "torch", "timm": "timm", "hf": "transformers", "onnxruntime": "onnxruntime", "openvino": "openvino"}
WAIT_POLICIES = ("default", "passive", "active", "spin=N")


def wait_policy_env(policy: str) -> dict[str, str]:
    """The environment variables of a wait policy (:data:`WAIT_POLICIES`; ``spin=N`` with an integer N)."""
    if policy == "default":
        return {}
    if policy in ("passive", "active"):
        return {"OMP_WAIT_POLICY": policy.upper()}
    name, _, count = policy.partition("=")
    if name == "spin" and count.isdigit():
        return {"GOMP_SPINCOUNT": count}
    raise ValueError(f"unknown wait policy {policy!r}; choose from {', '.join(WAIT_POLICIES)}")


@dataclass(frozen=True)
class Runner:
    """One runtime in one precision at one thread count (0: the free cores when its process starts),
    timing inference or a training step."""

    runtime: str
    precision: str
    threads: int
    mode: str = "infer"

    @property
    def label(self) -> str:
        threads = f"{self.threads}t" if self.threads else "auto"
        return f"{self.runtime}/{self.precision}/{threads}" + ("/train" if self.mode == "train" else "")


def available(runtime: str) -> bool:
    """Whether ``runtime``'s package is importable here (OpenVINO's int8 also wants NNCF; without it
    the runner takes our static QDQ file)."""
    import importlib.util

    return importlib.util.find_spec(_MODULES[runtime]) is not None


def runners_for(runtimes: Sequence[str], precisions: Sequence[str], threads: Sequence[int],
                mode: str = "infer") -> list[Runner]:
    """Every (runtime, precision, threads) the runtimes offer in ``mode`` (``infer``: :data:`RUNTIMES`,
    ``train``: :data:`TRAIN_RUNTIMES`), in the order given."""
    if mode not in ("infer", "train"):
        raise ValueError(f"unknown mode {mode!r}; choose from infer, train")
    offered = RUNTIMES if mode == "infer" else TRAIN_RUNTIMES
    for r in runtimes:
        if r not in offered:
            raise ValueError(f"unknown {'runtime' if r not in RUNTIMES else mode + ' runtime'} {r!r}; "
                             f"choose from {', '.join(offered)}")
    return [Runner(r, p, t, mode) for t in threads for p in precisions for r in runtimes if p in offered[r]]


# ---------------------------------------------------------------------------------- artifacts
def prepare(model_name: str, folder: Path, runners: Sequence[Runner], case: Case, *, seed: int = 0,
            log: Callable[[str], None] = lambda s: None) -> dict[str, str]:
    """Write what the runners of ``model_name`` load into ``folder`` (once): our weights, the ONNX file and
    its int8 forms, and the benchmark input; returns name -> path."""
    import numpy as np
    import torch

    from ..models.registry import create_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = create_model(model_name, accelerate=False).eval()
    files = {"weights": str(folder / "weights.pt"), "input": str(folder / "input.npy")}
    torch.save(model.state_dict(), files["weights"])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch_size, 3, *case.size, generator=g)
    np.save(files["input"], x.numpy())
    calibration = torch.randn(8, 3, *case.size, generator=g)
    torch.save(calibration, folder / "calibration.pt")
    files["calibration"] = str(folder / "calibration.pt")
    wanted = {(r.runtime, r.precision) for r in runners}
    if any(rt in ("onnxruntime", "openvino") for rt, _ in wanted):
        from ..tools.export import export_model, quantize_onnx

        log(f"exporting {model_name} to ONNX")
        files["onnx"] = str(export_model(model, "onnx", folder / "model.onnx"))
        if ("onnxruntime", "int8") in wanted:
            files["onnx_int8"] = str(quantize_onnx(files["onnx"], folder / "model_int8_dynamic.onnx"))
        if ("openvino", "int8") in wanted:
            files["openvino_int8"] = _openvino_int8(files["onnx"], folder, calibration, log)
    return files


def _openvino_int8(onnx_file: str, folder: Path, calibration, log: Callable[[str], None]) -> str:
    """OpenVINO's own int8 of our ONNX file: NNCF's post-training quantisation (calibrated on
    ``calibration``) saved as OpenVINO IR; without NNCF, our static QDQ file (which OpenVINO fuses)."""
    import openvino as ov

    try:
        import nncf
    except ImportError:
        from ..tools.export import quantize_onnx

        log("NNCF is not installed: OpenVINO int8 runs our static QDQ ONNX file")
        return str(quantize_onnx(onnx_file, folder / "model_int8_qdq.onnx", calibration))
    log("quantising for OpenVINO with NNCF")
    core = ov.Core()
    model = core.read_model(onnx_file)
    data = nncf.Dataset([calibration[i : i + 1].numpy() for i in range(calibration.shape[0])])
    quantized = nncf.quantize(model, data, subset_size=calibration.shape[0], model_type=nncf.ModelType.TRANSFORMER)
    out = folder / "model_int8_nncf.xml"
    ov.save_model(quantized, str(out))
    return str(out)


# ------------------------------------------------------------------------------------ runner
def _build(spec: dict[str, Any]) -> Callable[[], Any]:
    """The inference call of a runner (in the child process)."""
    import numpy as np
    import torch

    runtime, precision, threads = spec["runtime"], spec["precision"], spec["threads"]
    files = spec["files"]
    if spec.get("mode") == "train":
        return _train_step(spec)
    x = np.load(files["input"])
    if runtime == "compile":  # our plain model under torch.compile (Inductor, freezing on)
        from ..accel.compile import compile_model
        from ..models.registry import create_model

        model = create_model(spec["model"], accelerate=False).eval()
        model.load_state_dict(torch.load(files["weights"]))
        why = compile_model(model)
        if why:
            raise RuntimeError(why)
        xt = torch.from_numpy(x)

        def compiled() -> Any:
            with torch.inference_mode():
                return model(xt).numpy()

        return compiled
    if runtime in ("pvt", "timm", "hf"):
        from ..accel import accelerate
        from ..accel.quant import quantize
        from ..models.registry import create_model
        from .peers import reference_model

        ours = create_model(spec["model"], accelerate=False).eval()
        ours.load_state_dict(torch.load(files["weights"]))
        xt = torch.from_numpy(x)
        autocast = False
        if runtime == "pvt":
            if precision == "int8":
                model = quantize(ours, torch.load(files["calibration"]))
            else:
                model = accelerate(ours, precision=precision)
        else:
            model = reference_model(runtime, spec["model"], ours).eval()
            if precision == "int8":  # PyTorch's dynamic quantisation of the linear layers
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            autocast = precision == "bfloat16"

        def call() -> Any:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return model(xt).float().numpy()

        return call
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if spec.get("wait_policy") == "passive":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(files["onnx_int8" if precision == "int8" else "onnx"], opts,
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})[0]
    if runtime == "openvino":
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if precision != "int8":  # int8: OpenVINO's own choice around the int8 kernels
            config["INFERENCE_PRECISION_HINT"] = "f32" if precision == "float32" else "bf16"
        compiled = ov.Core().compile_model(files["openvino_int8" if precision == "int8" else "onnx"], "CPU", config)
        request = compiled.create_infer_request()
        return lambda: request.infer({0: x})[0]
    raise ValueError(f"unknown runtime {runtime!r}")


def _train_step(spec: dict[str, Any]) -> Callable[[], Any]:
    """The training step of a ``train`` runner: ours (the plain model; training runs the plain forward),
    timm's or HF's with our weights and the variant's stochastic depth, on the case's fixed batch."""
    import numpy as np
    import torch

    from ..models.registry import create_model
    from ..models.variants import get_variant
    from .cases import make_step
    from .peers import reference_model

    drop_path = get_variant(spec["model"]).drop_path_rate
    ours = create_model(spec["model"], accelerate=False, drop_path_rate=drop_path)
    ours.load_state_dict(torch.load(spec["files"]["weights"]))
    model = ours if spec["runtime"] == "pvt" else reference_model(spec["runtime"], spec["model"], ours,
                                                                    drop_path_rate=drop_path)
    np.random.seed(0)  # mixup's draws (numpy) and stochastic depth (torch): the same sequence in every runner
    torch.manual_seed(0)
    case = Case(spec["model"], spec["batch_size"], tuple(spec["size"]), spec["precision"], "train", "cpu")
    step = make_step(model, case)
    return lambda: step().numpy()


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one runner in this (fresh) process: build, warm up, time; the logits go to ``spec["logits"]``."""
    import time

    import numpy as np
    import torch

    from ..accel.runtime import configure_allocator, page_faults

    configure_allocator(spec.get("allocator"))
    used = None
    if not spec["threads"]:  # auto: the cores free now (busy cores of the run and other work left out)
        from ..base.cores import free_cores

        spec["threads"], used = free_cores()
    torch.set_num_threads(spec["threads"])
    call = _build(spec)
    t0 = time.perf_counter()
    out = call()  # outside the timing: torch.compile compiles here, the others warm up
    first_call = time.perf_counter() - t0
    for _ in range(spec["warmup"] - 1):
        out = call()
    np.save(spec["logits"], np.asarray(out, dtype=np.float32))
    seconds, faults = [], []
    for _ in range(spec["repeats"]):
        f0 = page_faults()
        t0 = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - t0)
        faults.append(page_faults() - f0)
    return {"seconds": seconds, "faults": statistics.median(faults), "torch_threads": torch.get_num_threads(),
            "first_call_s": first_call, "threads": spec["threads"], "cores_in_use": used}


def run_runner(runner: Runner, model_name: str, files: dict[str, str], *, warmup: int = 2, repeats: int = 10,
               wait_policy: str = "default", allocator: str | None = None, logits: str | Path | None = None,
               timeout: float = 1800, batch_size: int = 8, size: tuple[int, int] = (224, 224)) -> dict[str, Any]:
    """Run ``runner`` in a fresh process; returns ``{"seconds": [...], "faults": ..., "first_call_s": ...}``
    (the first call is the compile of a ``compile`` runner; Inductor's cache is ``files["inductor"]`` when
    given, so a second process of the same model and shape loads the compiled code). ``batch_size`` and
    ``size`` shape a ``train`` runner's batch (inference reads ``files["input"]``)."""
    policy_env = wait_policy_env(wait_policy)
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"runtime": runner.runtime, "precision": runner.precision, "threads": runner.threads,
                "model": model_name, "files": files, "warmup": warmup, "repeats": repeats,
                "wait_policy": wait_policy, "allocator": allocator, "mode": runner.mode,
                "batch_size": batch_size, "size": list(size),
                "logits": str(logits or Path(tmp) / "logits.npy")}
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        env.pop("GOMP_SPINCOUNT", None)
        env.update(policy_env)
        env.pop("OMP_NUM_THREADS", None)
        if runner.threads:
            env["OMP_NUM_THREADS"] = str(runner.threads)
        if files.get("inductor"):
            env["TORCHINDUCTOR_CACHE_DIR"] = files["inductor"]
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        done = subprocess.run([sys.executable, "-m", "pvt.bench.runtimes", json.dumps(spec)], capture_output=True,
                              text=True, env=env, timeout=timeout)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{runner.label} failed (exit {done.returncode}):\n{tail}")
        return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def busy_cores(n: int) -> Iterator[list[int]]:
    """``n`` processes, each spinning on one core, for the duration; yields their process ids."""
    if n < 0:
        raise ValueError(f"busy cores must be >= 0, got {n}")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# ------------------------------------------------------------------------------------- runs
def benchmark_runtimes(
    models: Sequence[str],
    runners: Sequence[Runner],
    *,
    batch_size: int = 8,
    size: tuple[int, int] = (224, 224),
    warmup: int = 2,
    repeats: int = 10,
    rounds: int = 2,
    busy: int = 0,
    wait_policy: str = "default",
    allocator: str | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[Result]:
    """Time every runner on every model, each call in a fresh process (see the module text); one
    :class:`~pvt.bench.cases.Result` per (model, runner). Runners whose package is missing are skipped
    with a message through ``log``."""
    import numpy as np

    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds} and {repeats}")
    runnable = []
    for r in runners:
        if available(r.runtime):
            runnable.append(r)
        else:
            log(f"skipping {r.label}: {_MODULES[r.runtime]} is not installed")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, busy_cores(busy):
        for name in models:
            case = Case(name, batch_size, size, "float32", "infer", "cpu")
            folder = Path(tmp) / name
            files = prepare(name, folder, runnable, case, log=log)
            files["inductor"] = str(folder / "inductor")  # empty: the first compile runner compiles cold
            seconds: dict[Runner, list[float]] = {r: [] for r in runnable}
            per_round: dict[Runner, list[float]] = {r: [] for r in runnable}
            first_calls: dict[Runner, list[float]] = {r: [] for r in runnable}
            chosen: dict[Runner, list[int]] = {r: [] for r in runnable}
            faults: dict[Runner, float] = {}
            for k in range(rounds):
                order = runnable[k % len(runnable):] + runnable[: k % len(runnable)] if runnable else []
                for r in order:
                    got = run_runner(r, name, files, warmup=warmup, repeats=repeats, wait_policy=wait_policy,
                                     allocator=allocator, logits=folder / f"{r.runtime}-{r.precision}-{r.threads}.npy",
                                     batch_size=batch_size, size=size)
                    seconds[r] += got["seconds"]
                    first_calls[r].append(round(got["first_call_s"], 1))
                    chosen[r].append(got["threads"])
                    per_round[r].append(round(batch_size / statistics.median(got["seconds"]), 2))
                    faults[r] = got["faults"]
                    auto = f" ({got['threads']} threads; {got['cores_in_use']:.1f} cores busy at start)" \
                        if not r.threads and got["cores_in_use"] is not None else ""
                    log(f"{name} round {k + 1}: {r.label} {per_round[r][-1]} img/s{auto}")
            reference = next((folder / f"pvt-float32-{r.threads}.npy" for r in runnable
                              if (r.runtime, r.precision) == ("pvt", "float32")), None)
            ref = np.load(reference).astype(np.float64) if reference is not None else None
            for r in runnable:
                out = np.load(folder / f"{r.runtime}-{r.precision}-{r.threads}.npy").astype(np.float64)
                diff = cos = None
                if ref is not None and out.shape == ref.shape and r.mode == "infer":
                    diff = float(np.abs(out - ref).max())
                    cos = float((out * ref).sum() / (np.linalg.norm(out) * np.linalg.norm(ref)))
                extra = {"rounds": per_round[r], "busy_cores": busy, "wait_policy": wait_policy,
                         "first_call_s": first_calls[r], "threads": chosen[r]}
                if r.runtime == "compile":
                    extra["compile_s"] = first_calls[r]  # round 1 compiles cold, later rounds load the cache
                results.append(Result.from_times(
                    r.runtime, Case(name, batch_size, size, r.precision, r.mode, "cpu"), seconds[r], r.threads,
                    page_faults=faults[r], max_abs_diff=diff, cosine=cos, extra=extra,
                ))
    return results


def format_runtime_results(results: Sequence[Result]) -> str:
    """One row per (model, threads, batch, runtime, precision): img/s, ms per batch, the spread, logits
    against our float32, and throughput over timm's float32 and over ours in the same precision."""
    header = (f"{'model':<14} {'thr':>4} {'batch':>5} {'runtime':<12} {'precision':<9} {'img/s':>8} "
              f"{'ms/batch':>9} {'iqr ms':>7} {'cosine':>8} {'max|diff|':>9} {'x timm32':>8} {'ours/x':>6}  per round")
    lines = [header, "-" * len(header)]
    rate = {(r.model, r.threads, r.batch_size, r.impl, r.dtype): r.img_per_s for r in results}
    for r in results:
        key = (r.model, r.threads, r.batch_size)
        timm32 = rate.get((*key, "timm", "float32"))
        ours = rate.get((*key, "pvt", r.dtype))
        vs_timm = f"{r.img_per_s / timm32:8.2f}" if timm32 else f"{'-':>8}"
        vs_ours = f"{ours / r.img_per_s:6.2f}" if ours and r.impl != "pvt" else f"{'-':>6}"
        cos = "-" if r.cosine is None else f"{r.cosine:.6f}"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        rounds = r.extra.get("rounds", [])
        if not r.threads:  # auto: each round's figure with the threads its process chose
            rounds = [f"{v} ({t}t)" for v, t in zip(rounds, r.extra.get("threads", []))]
        lines.append(f"{r.model:<14} {r.threads or 'auto':>4} {r.batch_size:>5} {r.impl:<12} {r.dtype:<9} {r.img_per_s:>8.2f} "
                     f"{r.latency_ms:>9.1f} {r.latency_iqr_ms:>7.1f} {cos:>8} {diff:>9} {vs_timm} {vs_ours}  "
                     f"{', '.join(map(str, rounds))}"
                     + (f"; compile {', '.join(map(str, r.extra['compile_s']))} s" if "compile_s" in r.extra else ""))
    return "\n".join(lines)


if __name__ == "__main__":  # the child process of run_runner
    print(json.dumps(_child(json.loads(sys.argv[1]))))
