"""CPU time per image of every runtime at one thread: a probe for machines that are not quiet.

Wall time on a shared machine measures the other processes as much as the model; the CPU time of one
single-threaded call is far less disturbed (only through the shared caches and memory bandwidth). So this
script runs everything at one thread in one process and reports images per CPU-second: ``thread_time``
for the PyTorch models (ours float32 / bf16 / int8 static, timm float32 / bf16), ``process_time`` for ONNX
Runtime and OpenVINO (which also counts their helper threads). It is no substitute for
``pvt benchmark --compare`` on a quiet machine (docs/speed.md), only an estimate of the ratios.

    python benchmarks/cpu_time.py pvt_v2_b0 pvt_v2_b2 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("-b", "--batch-size", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    import pvt
    from pvt.accel import accelerate, quantize
    from pvt.bench.peers import reference_model

    pvt.tune_cpu_allocator()
    for name in args.models:
        base = pvt.create_model(name, accelerate=False).eval()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        timm = reference_model("timm", name, base)
        torch_models = {
            "pvt float32": (accelerate(copy.deepcopy(base)), False),
            "pvt bfloat16": (accelerate(copy.deepcopy(base), precision="bfloat16"), False),
            "pvt int8": (quantize(copy.deepcopy(base), torch.randn(8, 3, args.img_size, args.img_size)), False),
            "timm float32": (timm, False),
            "timm bfloat16": (timm, True),
        }
        steps = {}
        for label, (model, autocast) in torch_models.items():
            def step(model=model, autocast=autocast):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    model(x)
            steps[label] = (step, time.thread_time)
        with tempfile.TemporaryDirectory() as tmp:
            steps.update(_runtimes(base, x.numpy(), Path(tmp)))
            times: dict[str, list[float]] = {k: [] for k in steps}
            for step, _ in steps.values():
                step()
            for _ in range(args.repeats):
                for label, (step, clock) in steps.items():
                    t0 = clock()
                    step()
                    times[label].append(clock() - t0)
        print(f"\n{name}, batch {args.batch_size} at {args.img_size}, one thread: images per CPU-second (best of "
              f"{args.repeats})")
        for label, ts in times.items():
            print(f"  {label:<22} {args.batch_size / min(ts):8.1f}")


def _runtimes(model, x: np.ndarray, folder: Path) -> dict:
    """ONNX Runtime float32 / int8 and OpenVINO float32 / bf16 on our ONNX export, timed by process time."""
    out = {}
    try:
        import onnxruntime as ort

        from pvt.tools.export import export_model, quantize_onnx
    except ImportError:
        return out
    f32 = export_model(model, "onnx", folder / "m.onnx")
    q8 = quantize_onnx(f32, folder / "q.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    for label, path in (("onnxruntime float32", f32), ("onnxruntime int8", q8)):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out[label] = (lambda sess=sess: sess.run(None, {"input": x}), time.process_time)
    try:
        import openvino as ov
    except ImportError:
        return out
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    for label, hint in (("openvino float32", "f32"), ("openvino bfloat16", "bf16")):
        request = core.compile_model(str(f32), "CPU", {**cfg, "INFERENCE_PRECISION_HINT": hint}).create_infer_request()
        out[label] = (lambda request=request: request.infer({0: x}), time.process_time)
    return out


if __name__ == "__main__":
    main()
