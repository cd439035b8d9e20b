"""Export a PVT model for deployment: ONNX, TorchScript or a ``torch.export`` ExportedProgram, with
dynamic batch, height and width.

Exports record the plain PyTorch ops, never the fused kernels of :mod:`pvt.accel` (an accelerated
model takes its plain path while it is traced), so the files run on any backend. PVT v1's position embedding is resized inside
the graph, so v1 exports accept every input size too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ..base.io import atomic_via, atomic_write
from ..models.model import PyramidVisionTransformer
from ..weights.checkpoint import load_pvt, read_metadata

__all__ = ["FORMATS", "ONNX_OPSETS", "check_onnx_export", "require_onnx", "load_model", "export_model",
           "quantize_onnx", "export_min_size", "default_suffix", "run_exported", "check_export"]

FORMATS = ("onnx", "torchscript", "exported-program")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
ONNX_OPSETS = range(18, 24)
"""The ONNX opsets an export can target: torch's exporter writes 18 and newer itself; older ones only
through a version converter that fails on these models (and then silently keeps 18)."""
_EXTRA = "pip install 'pyramid-vision-transformer[export]'"


def require_onnx(*modules: str) -> None:
    """A one-line ValueError naming the install command when one of the optional ONNX ``modules`` (onnx,
    onnxscript, onnxruntime) is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"ONNX needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}, which "
                         f"{'are' if len(missing) > 1 else 'is'} not installed: {_EXTRA}")


def check_onnx_export(opset: int) -> None:
    """A one-line ValueError unless ``opset`` is in :data:`ONNX_OPSETS` and the exporter's packages are there."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in ONNX_OPSETS:
        raise ValueError(f"ONNX opset {opset!r} is not supported; accepted: {ONNX_OPSETS.start}.."
                         f"{ONNX_OPSETS.stop - 1}")
    require_onnx("onnx", "onnxscript")


def default_suffix(fmt: str) -> str:
    return _SUFFIX[fmt]


def load_model(source: str, *, num_classes: int | None = None, model: str | None = None) -> PyramidVisionTransformer:
    """A registry name (random weights) or a checkpoint path.

    Checkpoints in this library's own format rebuild the exact config they record; other formats
    (official, timm, HF) go through :func:`pvt.create_model` with the variant ``model`` names, or
    the one the checkpoint's shapes identify."""
    from ..models.registry import create_model, list_models

    path = Path(source)
    if source in list_models():
        return create_model(source, num_classes=num_classes)
    if not path.exists():
        raise FileNotFoundError(
            f"{source!r} is neither a registered model ({', '.join(list_models())}) nor an existing checkpoint path"
        )
    meta = read_metadata(path) if path.is_file() else None
    if meta is not None and model is None and "config" in meta and num_classes is None:
        return load_pvt(path)[0]
    from ..weights import create_pretrained

    return create_pretrained(model, path, num_classes=num_classes)


def _example(model: PyramidVisionTransformer, size: int) -> Tensor:
    return torch.randn(2, model.config.in_chans, size, size)


def export_min_size(model: PyramidVisionTransformer) -> int:
    """Smallest side the dynamic-shape exports accept: every stage map and every spatially reduced
    key/value map at least 2 wide (exporters specialise sizes of 1, so those are left out)."""
    for size in range(model.min_input_size, 8192):
        n, ok = size, True
        for stage in model.stages:
            n = stage.patch_embed.output_size(n, n)[0]
            attn = stage.blocks[0].attn if len(stage.blocks) else None
            r = attn.sr.stride[0] if attn is not None and attn.sr is not None and attn.pool is None else 1
            ok = ok and n >= 2 and (n - r) // r + 1 >= 2
        if ok:
            return size
    raise ValueError("this configuration accepts no export size below 8192")


def _dynamic_shapes(model: PyramidVisionTransformer) -> dict[str, dict[int, torch.export.Dim]]:
    lo = export_min_size(model)
    return {
        "x": {
            0: torch.export.Dim("batch", min=1, max=4096),
            2: torch.export.Dim("height", min=lo, max=8192),
            3: torch.export.Dim("width", min=lo, max=8192),
        }
    }


def export_model(
    model: PyramidVisionTransformer,
    fmt: str,
    out: str | Path,
    *,
    example_size: int | None = None,
    opset: int = 18,
) -> Path:
    """Write ``model`` (eval mode, float32, CPU) as ``fmt`` to ``out``; returns the path.

    Inputs: ``(batch, in_chans, height, width)`` float32 named ``input``; output ``logits``
    ``(batch, num_classes)`` (pooled features when the model has no head). ONNX and ExportedProgram
    files accept any batch and any height/width >= :func:`export_min_size`; TorchScript traces the
    shape arithmetic too. ``example_size``: the side of the tracing example (default: the config's
    ``img_size``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "onnx":
        check_onnx_export(opset)
    out = Path(out)
    if fmt == "exported-program" and out.suffix != ".pt2":
        raise ValueError(f"{out}: ExportedProgram files must end in .pt2 (torch.export.load insists)")
    # a missing parent folder is created (by the atomic writer), as for every other output
    model = model.eval().float().cpu()
    x = _example(model, example_size or model.config.img_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            _export_onnx(model, x, out, opset)
        elif fmt == "torchscript":
            _write(out, torch.jit.save, torch.jit.trace(model, x, check_trace=False))
        else:
            _write(out, torch.export.save, torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(model)))
    return out


def _write(out: Path, save, obj) -> None:
    """``save(obj, buffer)`` in memory, then the bytes atomically to ``out``: torch's archive writer aborts
    the process (an exception thrown in a destructor) when the disk fills under it; our writer reports it."""
    import io

    buf = io.BytesIO()
    save(obj, buf)
    with atomic_write(out) as f:
        f.write(buf.getbuffer())


def _export_onnx(model: nn.Module, x: Tensor, out: Path, opset: int) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every pass
        program = torch.onnx.export(
            model,
            (x,),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=_dynamic_shapes(model),
            dynamo=True,
            opset_version=opset,
            external_data=False,
        )
        atomic_via(out, lambda tmp: program.save(tmp, external_data=False))


QUANTIZED_OPS = ("MatMul", "Gemm")
"""The ONNX operators :func:`quantize_onnx` makes int8: every linear layer (the convolutions stay float32)."""


def quantize_onnx(src: str | Path, out: str | Path, calibration: Tensor | None = None) -> Path:
    """Write an int8 copy of the float32 ONNX file ``src`` to ``out`` (ONNX Runtime's quantisation tool)
    and return ``out``: int8 weights for every linear layer (:data:`QUANTIZED_OPS`).

    Without ``calibration``: dynamic quantisation (``DynamicQuantizeLinear`` + ``MatInteger``: each call
    measures its activations' range), per-tensor weights. With ``calibration`` images (a float32
    ``(N, C, H, W)`` tensor prepared as the model's input): static QDQ (``QuantizeLinear`` /
    ``DequantizeLinear`` pairs around each product, uint8 activations from the calibrated min / max,
    int8 weights per output channel), the form OpenVINO and ONNX Runtime fuse into int8 kernels.
    The file keeps the input ``input``, the output ``logits`` and the dynamic batch / height / width."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as e:  # pragma: no cover - in the test extra
        raise ValueError("int8 ONNX export needs the onnxruntime package (pip install onnxruntime)") from e
    src, out = Path(src), Path(out)
    if calibration is None:
        with _quiet_root_logger():  # the tool logs a pre-processing suggestion on every call
            atomic_via(out, lambda tmp: quantize_dynamic(src, tmp, op_types_to_quantize=list(QUANTIZED_OPS),
                                                         weight_type=QuantType.QInt8))
        return out
    if calibration.ndim != 4 or calibration.shape[0] < 1:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) tensor, got {tuple(calibration.shape)}")

    class _Images(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration.float().numpy()[i : i + 1] for i in range(calibration.shape[0]))

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    with _quiet_root_logger():
        atomic_via(out, lambda tmp: quantize_static(
            src, tmp, _Images(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8))
    return out


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def run_exported(fmt: str, path: str | Path, x: Tensor) -> Tensor:
    """Run an exported file on ``x`` (ONNX through onnxruntime on CPU)."""
    if fmt == "onnx":
        require_onnx("onnxruntime")
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()(x)
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def check_export(
    model: PyramidVisionTransformer, fmt: str, path: str | Path, sizes: list[tuple[int, int]] | None = None
) -> list[tuple[tuple[int, int], float]]:
    """Max absolute difference between the exported file and ``model`` at each ``(H, W)`` in ``sizes``
    (default: the config's size with batch 2, and an odd non-square size with batch 3)."""
    lo = export_min_size(model)
    s = model.config.img_size
    sizes = sizes or [(s, s), (max(lo, s // 2 + 1), max(lo, s * 3 // 4 + 3))]
    out = []
    for i, (h, w) in enumerate(sizes):
        x = torch.randn(2 + i, model.config.in_chans, h, w)
        with torch.no_grad():
            ref = model.eval()(x)
            got = run_exported(fmt, path, x)
        out.append(((h, w), (got - ref).abs().max().item()))
    return out
