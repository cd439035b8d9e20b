"""The one answer to "is this forward being traced?" that every layer and execution path asks.

True while TorchScript traces or scripts, ``torch.compile`` / ``torch.export`` capture a graph, or the
ONNX exporter runs: shapes may then be symbolic, and only plain PyTorch ops may be recorded.
"""

from __future__ import annotations

import torch

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """Whether the current forward is being captured into a graph (TorchScript, compile, export, ONNX)."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )
