"""An exported ONNX file timed in onnxruntime (CPU), optionally beside our PyTorch model in the same
interleaved loop, so that the table's ``ours/x`` compares the two from one run."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .cases import Case, Result
from .timing import time_interleaved

__all__ = ["run_onnxruntime"]


def run_onnxruntime(
    path: str,
    case: Case,
    *,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    model: nn.Module | None = None,
) -> list[Result]:
    """Throughput of an exported ONNX file in onnxruntime (CPU) at ``case``'s batch and size (inference,
    float32: the exported graph).

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
    timed = dataclasses.replace(case, mode="infer", device="cpu")
    return [
        Result.from_times(
            impl,
            timed,
            ts,
            n,
            page_faults=statistics.median(faults[impl]),
            extra={"onnx": str(path)} if impl == "onnxruntime" else {},
        )
        for impl, ts in times.items()
    ]
