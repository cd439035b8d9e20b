"""The plain model under ``torch.compile`` (Inductor, freezing on) with its on-disk caches, so a second
start is fast: what ``accelerate(model, compile=True)`` does.

Inductor compiles the model's plain forward (the accelerated modules step aside while a graph is traced,
:mod:`pvt.accel.modules`) into C++ / OpenMP kernels; freezing folds the weights into the graph as
constants (inference only: calls under ``torch.inference_mode`` / ``no_grad``), which lets it pre-pack them
for oneDNN. The first call of each input shape compiles (minutes for PVT v2 B0 on a 2-core CPU); the
compiled code goes to Inductor's caches (the FX graph cache and the C++ build folder) under
:func:`inductor_cache_dir`, so a new process with the same model and shapes loads it instead of
building it again (figures: docs/speed.md).

Where torch.compile cannot run (no C++ compiler, a platform Inductor does not support, an older
PyTorch), :func:`compile_model` says why in one line and leaves the model as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..base.io import cache_root

__all__ = ["inductor_cache_dir", "compiler_missing", "compile_model", "is_compiled"]


def inductor_cache_dir() -> Path:
    """Where Inductor keeps its compiled code for pvt: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it,
    else ``$PVT_CACHE/inductor`` or ``~/.cache/pvt/inductor``."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return cache_root("inductor")


def compiler_missing() -> str | None:
    """Why torch.compile with Inductor cannot run on the CPU here (one line), or None where it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        from torch._dynamo import is_dynamo_supported

        if not is_dynamo_supported():
            return "torch.compile does not support this Python / platform"
    except ImportError as e:
        return f"torch.compile is unavailable: {e}"
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "", "g++", "clang++", "c++")):
        return "no C++ compiler found (g++ / clang++ / $CXX), which Inductor needs on the CPU"
    return None


def compile_model(model: nn.Module, *, dynamic: bool | None = False) -> str:
    """Compile ``model``'s calls in place (``nn.Module.compile``: Inductor, freezing on, the caches of
    :func:`inductor_cache_dir`); returns ``""``, or one line saying why not (the model is then unchanged).

    ``dynamic=False`` (default) compiles one graph per input shape, the fastest for a fixed batch; the
    compilation happens at the first call of each shape."""
    why = compiler_missing()
    if why:
        return why
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())  # read by Inductor when it compiles
    try:  # this model's Inductor settings (the process-wide torch._inductor.config stays as it was)
        model.compile(backend="inductor", dynamic=dynamic, options={"freezing": True, "fx_graph_cache": True})
    except Exception as e:  # noqa: BLE001 -- any failure to set up means: run as before
        return f"torch.compile failed ({type(e).__name__}: {e})".splitlines()[0]
    return ""


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model``'s calls go through torch.compile (:func:`compile_model`)."""
    return getattr(model, "_compiled_call_impl", None) is not None
