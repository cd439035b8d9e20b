"""The accelerated classes: each is the plain class it extends plus a ``forward`` that picks a path.

:func:`pvt.accel.accelerate` turns a plain model into one of these by changing the classes of its
modules in place (``module.__class__``); parameters, buffers, state-dict keys and submodules stay what
they were. Every accelerated module carries two attributes of its own: ``acceleration`` (the
:class:`Acceleration` record: which paths are on) and ``weight_cache`` (a
:class:`~pvt.accel.cache.WeightCache`).

Which path a call takes (:func:`inference_path`):

* the CPU path (:mod:`pvt.accel.cpu`) for a plain CPU float32 tensor without autograd or CPU autocast,
  in the model's precision (:attr:`Acceleration.precision`: float32, bfloat16 or int8); under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` in bfloat16 (int8 models: int8 with bfloat16
  around it); a bfloat16 tensor (what one accelerated module hands the next) where the precision in
  effect is not float32. Where oneDNN's fused bf16 kernels do not run (:attr:`Acceleration.bf16_fused`,
  e.g. AVX2-only CPUs) bfloat16 is the plain modules under CPU bf16 autocast, and int8 keeps float32
  around its products;
* the GPU path (:mod:`pvt.accel.gpu`) for a CUDA tensor under ``torch.autocast("cuda")`` without
  autograd;
* otherwise the plain forward: training, float16 CPU autocast, other dtypes and devices, and whenever
  :func:`pvt.base.tracing.is_tracing` (TorchScript, ``torch.compile``, ``torch.export``, ONNX); also in
  training mode with dropout or stochastic depth active, and whenever a forward hook or forward
  pre-hook is registered globally, on the module or on a submodule that is not accelerated itself
  (those choose for themselves), so that hook-based tools such as FLOP counters and feature
  extractors see every layer. The model splits a CPU batch into pieces only when no module at all
  has a hook, since a hook would then see pieces instead of the batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals
from torchvision.ops import StochasticDepth

from ..base.tracing import is_tracing
from ..layers import Block, PatchEmbed, SpatialReductionAttention
from ..models.model import PVTStage, PyramidVisionTransformer
from . import capability, cpu, gpu
from .cache import WeightCache

__all__ = [
    "Acceleration",
    "Accelerated",
    "AcceleratedInt8",
    "cpu_plan",
    "AcceleratedPatchEmbed",
    "AcceleratedBlock",
    "AcceleratedPVTStage",
    "AcceleratedPyramidVisionTransformer",
]


@dataclass(frozen=True)
class Acceleration:
    """What :func:`pvt.accel.accelerate` turned on: the CPU path (fused oneDNN kernels, batches in
    pieces), the GPU path (cached casts, Triton LayerNorm), and the pieces' budget in bytes of stage-1
    activation (``None``: chosen by the allocator in effect at each call; 0: whole batches)."""

    cpu: bool = True
    gpu: bool = True
    chunk_bytes: int | None = None
    precision: str = "float32"
    """The CPU path's precision for float32 input: float32, bfloat16, or int8 (:mod:`pvt.accel.quant`)."""
    compute: str = "float32"
    """int8: the dtype of everything but the int8 products (bfloat16 on CPUs with native bf16)."""
    int8: str | None = None
    """int8: ``"static"`` (calibrated activation ranges) or ``"dynamic"`` (each call's own ranges);
    ``"observe"`` while :func:`pvt.accel.quant.calibrate` records ranges."""
    reduce_range: bool = False
    """int8: activations quantised to 7 bits (CPUs without VNNI, where 8-bit products can saturate)."""
    int8_min_width: int = 0
    """int8: the linear layers with at least this many outputs run int8, the others in ``compute``
    (:data:`pvt.accel.cpu.INT8_MIN_WIDTH`)."""
    bf16_fused: bool = field(default_factory=lambda: capability.bf16_kernels() is None)
    """Whether bfloat16 (the precision, or CPU bf16 autocast) runs oneDNN's fused kernels here; False:
    the plain modules under CPU autocast, and int8 with float32 around it (:func:`~.capability.bf16_kernels`)."""
    note: str = ""
    """One line on what runs differently from what was asked for, and why (empty: as asked)."""

    def piece_budget(self) -> int:
        """The piece budget in effect now (:func:`pvt.accel.cpu.piece_budget`)."""
        return cpu.piece_budget(self.chunk_bytes)

    def cpu_plan(self, autocast_bf16: bool = False) -> cpu.Plan:
        """The :class:`~pvt.accel.cpu.Plan` of a CPU-path call (``autocast_bf16``: under CPU bf16 autocast)."""
        if self.precision == "int8":
            bf16 = self.bf16_fused and (autocast_bf16 or self.compute == "bfloat16")
            return cpu.plan("int8", torch.bfloat16 if bf16 else torch.float32, self.int8 == "static",
                            self.reduce_range, observe=self.int8 == "observe", min_width=self.int8_min_width)
        if autocast_bf16 or self.precision == "bfloat16":
            return cpu.BF16 if self.bf16_fused else cpu.AUTOCAST_BF16
        return cpu.F32

    def __repr__(self) -> str:
        if not self.cpu:
            pieces = "off"
        elif self.chunk_bytes is None:
            pieces = f"auto (now {_mib(self.piece_budget())})"
        else:
            pieces = _mib(self.chunk_bytes) if self.chunk_bytes > 0 else "whole batches"
        precision = ""
        if self.precision == "bfloat16":
            precision = ", precision=bfloat16"
        elif self.precision == "int8":
            width = f", layers >= {self.int8_min_width} wide" if self.int8_min_width else ""
            precision = f", precision=int8 ({self.int8}, {self.compute} around it{width}{', 7-bit' if self.reduce_range else ''})"
        note = f", note={self.note!r}" if self.note else ""
        return f"Acceleration(cpu={self.cpu}, gpu={self.gpu}, cpu_pieces={pieces}{precision}{note})"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _drops(m: nn.Module) -> bool:
    """Whether ``m`` drops activations at random in training mode."""
    if isinstance(m, (nn.Dropout, StochasticDepth)):
        return m.p > 0
    return isinstance(m, SpatialReductionAttention) and m.attn_drop > 0


def _autocast_bf16() -> bool | None:
    """Under CPU autocast: whether to bfloat16 (None: not under CPU autocast)."""
    if not torch.is_autocast_enabled("cpu"):
        return None
    return torch.get_autocast_dtype("cpu") == torch.bfloat16


def cpu_plan(module: nn.Module) -> cpu.Plan:
    """The CPU path's plan for a call of the accelerated ``module`` now (autocast state included)."""
    return module.acceleration.cpu_plan(bool(_autocast_bf16()))


def _input_path(module: nn.Module, x: object, cpu_path: bool, gpu_path: bool) -> str | None:
    """The path that input ``x`` and the autograd / autocast / tracing state allow (cheap checks only)."""
    if type(x) is not Tensor or torch.is_grad_enabled():
        return None
    acc: Acceleration = module.acceleration
    if x.device.type == "cpu":
        path = None
        if cpu_path and acc.cpu and cpu.FUSED_OPS:
            autocast = _autocast_bf16()
            if autocast is None:
                ok = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and acc.precision != "float32")
            else:
                ok = autocast and x.dtype in (torch.float32, torch.bfloat16)
            path = "cpu" if ok else None
    elif x.is_cuda and gpu_path and acc.gpu and torch.is_autocast_enabled("cuda"):
        path = "gpu"
    else:
        return None
    return None if path is None or is_tracing() else path


def _needs_plain(module: nn.Module, everything: bool) -> bool:
    """Whether a forward hook or pre-hook (global, on ``module`` or below it) or active dropout in
    training mode asks for the plain forward. Accelerated submodules choose their own path, so they
    are looked at only with ``everything``."""
    if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
        return True
    if module._forward_hooks or module._forward_pre_hooks:
        return True
    training = module.training
    stack = list(module._modules.values())
    while stack:  # a plain loop: this runs on every call of every accelerated module
        m = stack.pop()
        if m is None or (not everything and isinstance(m, Accelerated)):
            continue
        if m._forward_hooks or m._forward_pre_hooks or (training and _drops(m)):
            return True
        stack += m._modules.values()
    return False


def inference_path(module: nn.Module, x: object, *, cpu_path: bool, gpu_path: bool) -> str | None:
    """``"cpu"``, ``"gpu"`` or None (the plain forward) for a call of the accelerated ``module`` on ``x``
    (see the module text); ``cpu_path`` / ``gpu_path``: whether ``module`` has that path."""
    path = _input_path(module, x, cpu_path, gpu_path)
    return None if path is None or _needs_plain(module, everything=False) else path


def _plain_input(x: object) -> object:
    """What the plain forward gets: a bfloat16 CPU tensor that a lower-precision neighbour handed over
    (outside autocast) goes back to float32, the dtype of the plain modules' parameters."""
    if type(x) is Tensor and x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        return x.float()
    return x


def _no_cpu_autocast():
    """The CPU path picks its own dtypes: CPU autocast off inside it (a no-op context when it is off)."""
    return torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") else nullcontext()


def _plain_bf16(p: cpu.Plan | None):
    """CPU bf16 autocast around the plain modules for :data:`pvt.accel.cpu.AUTOCAST_BF16`, else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if p is cpu.AUTOCAST_BF16 else nullcontext()


class Accelerated:
    """Base of the accelerated classes: the attributes :func:`pvt.accel.accelerate` gives each module."""

    acceleration: Acceleration
    """Which paths are on (the same record as the model's)."""
    weight_cache: WeightCache
    """Tensors this module's paths derive from its parameters; emptied by copies and pickles."""


class AcceleratedInt8:
    """The attributes an accelerated :class:`~pvt.layers.Block` has for the int8 path."""

    activation_ranges: dict[str, tuple[float, float]]
    """Calibrated ``(min, max)`` of the input of each int8 product (static int8; empty otherwise)."""
    activation_qparams: dict[str, tuple[float, int]]
    """The uint8 scale and zero point made from :attr:`activation_ranges`."""


class AcceleratedPatchEmbed(Accelerated, PatchEmbed):
    """:class:`~pvt.layers.PatchEmbed` with the CPU and GPU paths (cached weight layouts / casts)."""

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        path = inference_path(self, x, cpu_path=True, gpu_path=True)
        if path == "cpu":
            p = cpu_plan(self)  # before autocast goes off: it decides the plan
            if p is cpu.AUTOCAST_BF16:
                with _plain_bf16(p):
                    return super().forward(x)
            with _no_cpu_autocast():
                return cpu.patch_embed(self, x, p)
        if path == "gpu":
            return gpu.patch_embed(self, x, torch.get_autocast_dtype("cuda"))
        return super().forward(_plain_input(x))


class AcceleratedBlock(Accelerated, AcceleratedInt8, Block):
    """:class:`~pvt.layers.Block` with the CPU path (fused oneDNN kernels) and the GPU path."""

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        path = inference_path(self, x, cpu_path=True, gpu_path=True)
        if path == "cpu":
            p = cpu_plan(self)  # before autocast goes off: it decides the plan
            if p is cpu.AUTOCAST_BF16:
                with _plain_bf16(p):
                    return super().forward(x, h, w)
            with _no_cpu_autocast():
                return cpu.block(self, x, h, w, p)
        if path == "gpu":
            return gpu.block(self, x, h, w, torch.get_autocast_dtype("cuda"))
        return super().forward(_plain_input(x), h, w)


class AcceleratedPVTStage(Accelerated, PVTStage):
    """:class:`~pvt.models.model.PVTStage` whose closing LayerNorm takes the GPU path's LayerNorm (its patch
    embedding and blocks are accelerated modules of their own)."""

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        if self.norm is not None and inference_path(self, x, cpu_path=False, gpu_path=True) == "gpu":
            return gpu.stage(self, x, torch.get_autocast_dtype("cuda"))
        return super().forward(x)


class AcceleratedPyramidVisionTransformer(Accelerated, PyramidVisionTransformer):
    """:class:`~pvt.models.model.PyramidVisionTransformer` that runs CPU batches in pieces
    (:func:`pvt.accel.cpu.piece_size`); its stages, patch embeddings and blocks are accelerated."""

    def _cpu_call(self, x: Tensor) -> tuple[cpu.Plan | None, int | None]:
        """The plan of a CPU-path call on ``x`` (None: not the CPU path) and its images per piece (None:
        the whole batch at once)."""
        if _input_path(self, x, cpu_path=True, gpu_path=False) != "cpu" or x.ndim != 4:
            return None, None
        p = cpu_plan(self)
        size = cpu.piece_size(self, x.shape[0], x.shape[-2], x.shape[-1], self.acceleration.piece_budget(),
                              p.dtype.itemsize)
        if size is not None and _needs_plain(self, everything=True):  # pieces would change what every hook sees
            size = None
        if size is not None:
            self._check_input(x)  # errors name the whole batch, not a piece
        return p, size

    def _piece_size(self, x: Tensor) -> int | None:
        """Images per piece for ``x`` on the CPU path; None: the whole batch at once."""
        return self._cpu_call(x)[1]

    def _features(self, x: Tensor, p: cpu.Plan | None) -> Tensor:
        with _plain_bf16(p):
            out = PyramidVisionTransformer.forward_features(self, x)
        return out if p is None or p.dtype == torch.float32 else out.float()

    def _logits(self, x: Tensor, p: cpu.Plan | None) -> Tensor:
        # lower-precision features: the head gets float32 (or autocast's)
        return self.forward_head(self._features(x, p))

    def _maps(self, x: Tensor, p: cpu.Plan | None) -> list[Tensor]:
        with _plain_bf16(p):
            maps = PyramidVisionTransformer.forward_pyramid(self, x)
        return maps if p is None or p.dtype == torch.float32 else [m.float() for m in maps]

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        p, size = self._cpu_call(x)
        if size is None:
            return self._maps(x, p)
        parts = [self._maps(piece, p) for piece in x.split(size)]
        return [torch.cat(maps) for maps in zip(*parts)]

    def forward_features(self, x: Tensor) -> Tensor:
        p, size = self._cpu_call(x)
        if size is None:
            return self._features(x, p)
        return torch.cat([self._features(piece, p) for piece in x.split(size)])

    def forward(self, x: Tensor) -> Tensor:
        p, size = self._cpu_call(x)
        if size is None:
            return self._logits(x, p)
        return torch.cat([self._logits(piece, p) for piece in x.split(size)])
