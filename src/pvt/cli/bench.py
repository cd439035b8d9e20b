"""`pvt benchmark` (speed and memory, optionally beside timm / HF) and `pvt export` (ONNX, TorchScript,
ExportedProgram with dynamic batch/height/width): argument parsing and printing around :mod:`pvt.bench`
and :mod:`pvt.tools.export`, imported inside the commands so that ``pvt --help`` does not load them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..base.constants import FILE_LIMITS, MAX_BATCH, MAX_IMG_SIZE, MAX_THREADS
from .command import command
from .options import bounded

_RUNTIMES = ("pvt", "compile", "timm", "hf", "onnxruntime", "openvino")
_TRAIN_RUNTIMES = ("pvt", "timm", "hf")


def register(sub) -> None:
    """Add ``benchmark`` and ``export`` to the pvt parser."""
    p = command(sub, "benchmark", _benchmark,
            "inference / training throughput, latency and peak memory, optionally beside timm and HF",
            "Time PVT models: every (model, size, batch, dtype, mode) case runs warm-up rounds and then "
            "--repeats interleaved rounds; the table reports medians. --compare also builds timm's and HF "
            "transformers' implementations with the same (random) weights, checks their logits against ours "
            "and prints our throughput over theirs (ours/x) from the same run.", show_defaults=True)
    p.add_argument("models", nargs="*", default=["pvt_v2_b0"], help="registered model names")
    p.add_argument("--batch-size", "-b", nargs="+", default=[8], **bounded(int, 1, MAX_BATCH, "images per batch"))
    p.add_argument("--img-size", nargs="+", default=["224"], help=f"N or HxW, e.g. 224 800x1333 (each 1..{MAX_IMG_SIZE})")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="bfloat16 runs under torch.autocast")
    p.add_argument("--mode", nargs="+", default=["infer"], choices=["infer", "train"],
                   help="train: one training step of the recipe (mixup / cutmix with label smoothing, forward, "
                        "backward, AdamW); with --compare ours, timm's and HF's each in its own process")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", nargs="+", default=None, **bounded(
        int, 1, MAX_THREADS, "CPU threads (default: torch's; the runtime runners: the cores free when each "
        "runner's process starts); several values only with the runtime runners"))
    p.add_argument("--warmup", default=2, **bounded(int, 0, 10_000, "untimed rounds first"))
    p.add_argument("--repeats", default=5, **bounded(int, 1, 10_000, "timed rounds"))
    p.add_argument("--compare", action="store_true",
                   help="also time the peers: for CPU inference our plain model under torch.compile (Inductor, "
                        "freezing; with its compile time), timm, HF, ONNX Runtime and OpenVINO, for a CPU training "
                        "step timm and HF, each in its own process (the runtime runners below); with --in-process, "
                        "--device cuda or --compile: timm's and HF's in this process, interleaved (with --backend "
                        "onnxruntime --onnx: our PyTorch model)")
    p.add_argument("--in-process", action="store_true",
                   help="time every implementation in this one process, interleaved (peak memory, page faults)")
    p.add_argument("--compile", action="store_true",
                   help="also time our model and timm's (with --compare) under torch.compile")
    p.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode for --compile (reduce-overhead: CUDA graphs)")
    p.add_argument("--channels-last", action="store_true", help="channels-last input and model")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="onnxruntime / openvino: that runtime on our exported ONNX, beside ours, each in its own "
                        "process (with --onnx FILE: onnxruntime on that file in this process)")
    p.add_argument("--onnx", type=Path, help="ONNX file for --backend onnxruntime (timed in this process)")
    g = p.add_argument_group(
        "runtime runners (each runtime and precision in its own fresh process, alternating rounds, medians; "
        "CPU inference or --mode train; switched on by any of these options or by --backend without --onnx)")
    g.add_argument("--precision", nargs="+", choices=["float32", "bfloat16", "int8", "auto"],
                   help="precisions to run (auto: bfloat16 where the CPU multiplies it natively, else float32); "
                        "with --compare every runtime that offers the precision runs it")
    g.add_argument("--runtimes", nargs="+", choices=list(_RUNTIMES),
                   help="runtimes to run (default: pvt, and with --compare all of them; compile: our plain model "
                        "under torch.compile; --mode train: pvt, timm, hf)")
    g.add_argument("--rounds", default=None, **bounded(int, 1, 1000, "processes per runner, alternating (default 2)"))
    g.add_argument("--busy-cores", default=None, **bounded(
        int, 0, MAX_THREADS, "keep N cores busy with spinning processes during the run (a shared machine)"))
    g.add_argument("--wait-policy", default=None, metavar="{default,passive,active,spin=N}",
                   help="OpenMP waiting of the runners: OMP_WAIT_POLICY passive (idle threads sleep at once) / "
                        "active, or spin=N: GOMP_SPINCOUNT=N (spin N times, then sleep)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--allocator", choices=["tuned", "default"], default=None,
                   help="tuned: glibc keeps freed memory, so calls touch no new pages (every implementation in "
                        "the run benefits); default: glibc's own settings. Unset: $PVT_ALLOCATOR, else tuned")

    e = command(sub, "export", _export,
            "export a model to ONNX / TorchScript / ExportedProgram with dynamic batch, height and width",
            "Export a registered model (random weights) or a checkpoint (this library's format, or official / "
            "timm / HF weights) for deployment. The graph takes float32 NCHW 'input' of any batch size and any "
            "height/width from the printed minimum up, and returns 'logits'.", show_defaults=True)
    e.add_argument("source", help="registered model name or checkpoint path")
    e.add_argument("--format", dest="fmt", default="onnx", choices=["onnx", "torchscript", "exported-program"])
    e.add_argument("--out", type=Path, help="output file (default: <name>.onnx / .pt / .pt2)")
    e.add_argument("--model", help="variant of a checkpoint that does not record one")
    e.add_argument("--num-classes", **bounded(int, 0, FILE_LIMITS["num_classes"],
                                              "classifier size (default: the checkpoint's or 1000)"))
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (18 and newer; see pvt.tools.export.ONNX_OPSETS)")
    e.add_argument("--check", action="store_true", help="run the exported file at two sizes and compare")
    e.add_argument("--quantize", choices=["int8"], default=None,
                   help="ONNX: write an int8 file (every linear layer; ONNX Runtime's quantiser): dynamic ranges, or "
                        "static QDQ with --calibration; runs in ONNX Runtime and OpenVINO")
    e.add_argument("--calibration", metavar="DIR",
                   help="with --quantize int8: a folder of images (searched recursively, up to 64) for static ranges")


def _isolated(args: argparse.Namespace) -> bool:
    """Whether the options ask for the runtime runners (each runtime in its own process): any runner
    option, --backend without --onnx, or --compare for CPU inference (unless --in-process)."""
    if args.in_process or args.onnx is not None:
        return False
    cpu_case = (args.device == "cpu" and args.mode in (["infer"], ["train"]) and not args.compile
                and not args.channels_last)
    return bool(args.precision or args.runtimes or args.rounds or args.busy_cores or args.wait_policy
                or args.backend != "torch" or (args.compare and cpu_case))


def _benchmark(args: argparse.Namespace) -> int:
    import torch

    from ..bench import Case, format_results, is_dense, parse_size, run_case, run_onnxruntime
    from ..dense.zoo import get_dense_spec
    from ..engine.distributed import resolve_device
    from ..models.registry import create_model
    from ..models.variants import get_variant

    if args.device == "auto":
        raise ValueError("--device auto: name the device to time, e.g. cpu or cuda")
    resolve_device(args.device)  # a device this machine lacks fails here, on one line
    threads = args.threads or []
    # unknown names fail here, with close matches, before anything runs
    args.models = [get_dense_spec(n).name if "_pvt_" in n else get_variant(n).name for n in args.models]
    dense = [n for n in args.models if is_dense(n)]
    if dense and (args.compare or args.mode != ["infer"] or args.compile or args.backend != "torch"
                  or args.precision or args.runtimes):
        raise ValueError(f"{', '.join(dense)}: dense models are timed for PyTorch inference of ours alone "
                         "(no --compare, --mode train, --compile, --backend, --precision or --runtimes)")
    sizes = [parse_size(s) for s in args.img_size]
    if args.onnx is not None and args.backend != "onnxruntime":
        raise ValueError("--onnx FILE goes with --backend onnxruntime")
    if args.backend == "onnxruntime":
        from ..tools.export import require_onnx

        require_onnx("onnxruntime")
    if args.onnx is not None and not args.onnx.is_file():
        raise FileNotFoundError(f"ONNX file {args.onnx} does not exist")
    if _isolated(args) and not dense:
        return _benchmark_runtimes(args, sizes)
    runner_only = [flag for flag, value in (("--precision", args.precision), ("--runtimes", args.runtimes),
                                            ("--rounds", args.rounds), ("--busy-cores", args.busy_cores),
                                            ("--wait-policy", args.wait_policy)) if value]
    if runner_only:  # they would be ignored here, so a --precision int8 would time float32 silently
        why = "--in-process" if args.in_process else "--onnx" if args.onnx is not None else "dense models"
        raise ValueError(f"{', '.join(runner_only)}: options of the runtime runners (each runtime in its own "
                         f"process), not of {why}; in one process the precision is --dtype (float32, or "
                         "bfloat16 under autocast)")
    if len(threads) > 1:
        raise ValueError("several --threads values need the runtime runners (e.g. --precision float32)")
    if threads:
        torch.set_num_threads(threads[0])
    impls = ("pvt", "timm", "hf") if args.compare else ("pvt",)
    from ..accel.runtime import allocator_mode

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"allocator {allocator_mode()}", flush=True)
    results = []
    # with several cases, each case's table goes to stderr as it finishes (progress); one case's table
    # would be the final one again
    several = len(args.models) * len(sizes) * len(args.batch_size) * len(args.dtype) * len(args.mode) > 1
    for name in args.models:
        for size in sizes:
            for bs in args.batch_size:
                for dtype in args.dtype:
                    for mode in args.mode:
                        case = Case(name, bs, size, dtype, mode, args.device, args.channels_last)
                        if args.backend == "onnxruntime":
                            ours = create_model(name) if args.compare else None
                            results += run_onnxruntime(str(args.onnx), case, warmup=args.warmup,
                                                       repeats=args.repeats, threads=threads[0] if threads else None,
                                                       model=ours)
                            continue
                        done = run_case(case, impls, warmup=args.warmup, repeats=args.repeats,
                                        memory=not args.no_memory, compile=args.compile,
                                        compile_mode=args.compile_mode,
                                        log=lambda s: print(f"# {s}", file=sys.stderr))
                        print(f"# done: {case}", file=sys.stderr, flush=True)
                        if several:
                            print(format_results(done), file=sys.stderr, flush=True)
                        results += done
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=1))
    return 0


def _benchmark_runtimes(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> int:
    """The runtime runners: every (runtime, precision, threads) in its own process (pvt.bench.runtimes)."""
    import os

    from ..accel.capability import cpu_flags, cpu_model, resolve_precision
    from ..accel.runtime import allocator_mode
    from ..bench.runtimes import benchmark_runtimes, format_runtime_results, runners_for

    if args.device != "cpu" or len(args.mode) > 1 or args.compile or args.channels_last:
        raise ValueError("the runtime runners time CPU inference or one CPU training step (no --device, several "
                         "--mode, --compile, --channels-last; --in-process for those)")
    mode = args.mode[0]
    if mode == "train":
        bad = [p for p in args.precision or () if p == "int8"] + [r for r in args.runtimes or () if r not in _TRAIN_RUNTIMES]
        if bad or args.backend != "torch":
            raise ValueError(f"{', '.join(bad) or '--backend ' + args.backend} times CPU inference only; --mode train "
                             f"runs {', '.join(_TRAIN_RUNTIMES)} in float32 or bfloat16")
    runtimes = list(args.runtimes or ((_RUNTIMES if mode == "infer" else _TRAIN_RUNTIMES) if args.compare
                                      else ("pvt",)))
    if args.backend != "torch" and args.backend not in runtimes:
        runtimes.append(args.backend)
    precisions = []
    for requested in args.precision or args.dtype:
        picked, reason = resolve_precision(requested, "cpu")
        if requested == "auto":
            print(f"# precision auto -> {picked} ({reason})")
        if picked not in precisions:
            precisions.append(picked)
    threads = args.threads or [0]  # 0: each runner takes the cores free when its process starts
    runners = runners_for(runtimes, precisions, threads, mode)
    busy = args.busy_cores or 0
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx_vnni", "avx2")))
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs; flags: {' '.join(flags)}")
    if mode == "train":
        print("# one training step per call: mixup / cutmix with label smoothing, forward, backward, AdamW "
              "(pvt train's recipe), the same batch and weights in every runner")
    if threads == [0]:
        print("# threads: auto, the cores free when each runner's process starts (pvt.base.cores.free_cores; "
              "the busy cores of --busy-cores and other work left out)")
    print(f"# each runner in its own process: {args.rounds or 2} rounds x {args.repeats} calls after {args.warmup} "
          f"warm-up; busy cores {busy}; OpenMP wait policy {args.wait_policy or 'default'}; allocator {allocator_mode()}",
          flush=True)
    results = []
    for size in sizes:
        for bs in args.batch_size:
            results += benchmark_runtimes(
                args.models, runners, batch_size=bs, size=size, warmup=args.warmup, repeats=args.repeats,
                rounds=args.rounds or 2, busy=busy, wait_policy=args.wait_policy or "default",
                allocator=allocator_mode(), log=lambda s: print(f"# {s}", file=sys.stderr, flush=True),
            )
    print(format_runtime_results(results))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=1))
    return 0


def _export(args: argparse.Namespace) -> int:
    import tempfile

    from ..tools.export import (
        check_onnx_export,
        default_suffix,
        export_min_size,
        export_model,
        load_model,
        quantize_onnx,
        require_onnx,
    )

    if args.quantize and args.fmt != "onnx":
        raise ValueError("--quantize int8 writes ONNX files (--format onnx)")
    if args.calibration and not args.quantize:
        raise ValueError("--calibration goes with --quantize int8")
    if args.fmt == "onnx":
        check_onnx_export(args.opset)  # before the model is loaded
        if args.check or args.quantize:
            require_onnx("onnxruntime")
    model = load_model(args.source, num_classes=args.num_classes, model=args.model)
    out = args.out or Path(Path(args.source).stem + ("_int8" if args.quantize else "") + default_suffix(args.fmt))
    if args.quantize:
        images = None
        if args.calibration:
            from ..api import _folder_images

            images = _folder_images(Path(args.calibration), model.config.img_size, 64)
        with tempfile.TemporaryDirectory() as tmp:
            float_file = export_model(model, "onnx", Path(tmp) / "float32.onnx", opset=args.opset)
            quantize_onnx(float_file, out, images)
        kind = f"int8 ({'static QDQ, ' + str(len(images)) + ' calibration images' if images is not None else 'dynamic'})"
    else:
        export_model(model, args.fmt, out, opset=args.opset)
        kind = args.fmt
    print(f"wrote {out} ({kind}; input (batch, {model.config.in_chans}, H, W) float32 with H, W >= "
          f"{export_min_size(model)}; output logits (batch, {model.num_classes or model.num_features}))")
    if args.check:
        from ..tools.export import check_export

        for size, diff in check_export(model, args.fmt, out):
            print(f"check {size[0]}x{size[1]}: max |exported - pytorch| = {diff:.2e}")
    return 0
