"""What :func:`pvt.accel.accelerate` gives a model: per module, operations that pick a path per call
(:class:`AcceleratedOps`), and a model class that runs CPU batches in pieces.

The dataflow of every module stays the plain one (:mod:`pvt.layers`, :class:`~pvt.models.model.PVTStage`);
an accelerated patch embedding, block or stage differs only in its ``ops`` (an instance attribute over the
class's :data:`~pvt.layers.PLAIN`). Parameters, buffers, state-dict keys and submodules stay what they were.

Which operations a call takes (:meth:`AcceleratedOps.pick`), from what can change between calls:

* the CPU path's (:class:`pvt.accel.cpu.CpuOps`) for a plain CPU float32 tensor, in what the model's
  record says (:meth:`Acceleration.cpu_dtype`: float32, bfloat16, int8); under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` in bfloat16 (int8 models: int8 with bfloat16 around
  it); a bfloat16 tensor (what one accelerated module hands the next) where the precision is not
  float32. Where oneDNN's fused bf16 kernels do not run (:attr:`Acceleration.bf16_fused`, e.g. AVX2-only
  CPUs) bfloat16 is the plain modules under CPU bf16 autocast, and int8 keeps float32 around its products;
* the GPU path's (:class:`pvt.accel.gpu.GpuOps`) for a CUDA tensor under ``torch.autocast("cuda")``;
* otherwise the plain operations: with autograd on, in training mode (dropout and drop path, the
  reason the fused path is an inference path), float16 CPU autocast, other dtypes and devices, whenever
  :func:`pvt.base.tracing.is_tracing` (TorchScript, ``torch.compile``, ``torch.export``, ONNX), and while a
  forward hook or pre-hook is registered globally, on the module or on a layer its operations compute
  without calling it, so that hook-based tools (FLOP counters, feature extractors, attention maps) see
  every layer. The model splits a CPU batch into pieces only when no module at all has a hook, since a
  hook would then see pieces instead of the batch.

The accelerated model's call runs the tests that cannot change during it (tracing, the input's type,
dtype and device, autograd, the model's mode, autocast) once, and hands its decision to the modules it
calls for the length of the call (:class:`_Decided`, per thread); each module still tests what may
differ for it (its training mode, its input's type, device and dtype, hooks on its layers and global
ones, grad mode) before it takes the decided operations, and a module that finds a hook ends the
decision for the rest of the call (the hook may change what the model tested). A module called on its
own, outside such a call, runs every test.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals

from ..base.tracing import is_tracing
from ..layers import PLAIN, Block, Ops, PatchEmbed
from ..models.model import PVTStage, PyramidVisionTransformer
from . import cpu
from .cache import OpsState
from .gpu import GpuOps, float32_norms
from .record import Acceleration

__all__ = ["WITH_OPS", "AcceleratedOps", "AcceleratedPyramidVisionTransformer", "hooked"]

WITH_OPS = (PatchEmbed, Block, PVTStage)
"""The classes whose dataflow takes its operations from ``self.ops`` (:func:`pvt.accel.accelerate` gives
modules of exactly these classes their own)."""


def hooked(modules: tuple[nn.Module, ...]) -> bool:
    """Whether a forward hook or pre-hook is registered globally or on one of ``modules``."""
    # torch keeps global module hooks in these (private) dicts; reading them is two truth tests
    if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class _Float32Plain(Ops):
    """The plain operations on a bfloat16 CPU tensor that an accelerated neighbour handed over (outside
    autocast): its values go back to float32, the dtype of the plain layers' parameters, where the
    dataflow first reads them (a block's first LayerNorm, a patch embedding's convolution)."""

    def norm(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        return norm(x.float())

    def conv(self, conv: nn.Conv2d, x: Tensor, act: nn.Module | None = None) -> Tensor:
        return super().conv(conv, x.float(), act)


_FLOAT32_PLAIN = _Float32Plain()


def _plain(x: Tensor) -> Ops:
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        return _FLOAT32_PLAIN
    return PLAIN


class _Decided(threading.local):
    """What the accelerated model's call now running in this thread decided for its modules (None: no
    such call): its record, the input dtypes the decision holds for, and ``(compute dtype, autocast)``,
    the key of the CPU operations every module of the model takes for them."""

    call: tuple[Acceleration, tuple[torch.dtype, ...], tuple[torch.dtype, bool]] | None = None


_DECIDED = _Decided()


class AcceleratedOps(OpsState, Ops):
    """The ``ops`` :func:`pvt.accel.accelerate` gives one patch embedding, block or stage: its
    :class:`~pvt.accel.record.OpsState` (the model's record, weight cache, int8 ranges) and, per call,
    the operations that take it (see the module text)."""

    def __init__(self, module: nn.Module, record: Acceleration, cpu_path: bool = True):
        super().__init__(module, record)
        self.cpu_path = cpu_path and record.cpu and cpu.FUSED_OPS
        # the layers the operations compute without calling them (accelerated submodules, e.g. a stage's
        # blocks, pick for themselves): a hook on one of them sends the module down the plain path
        inner = {m for child in module.modules() if child is not module and type(child) in WITH_OPS
                 for m in child.modules()}
        self.watched = tuple(m for m in module.modules() if m not in inner)
        self.float32_norms = float32_norms(module)
        self._cpu: dict[tuple[torch.dtype, bool], cpu.CpuOps] = {}
        self._gpu: dict[torch.dtype, GpuOps] = {}

    def pick(self, module: nn.Module, x: Tensor) -> Ops:
        # Everything else was decided in accelerate(); each test here reads state that can change
        # between two calls of the same module. Hooks may be registered at any time; their layers were
        # listed once, so this is one truth test per layer of this module (~20, about a microsecond).
        hooks = hooked(self.watched)
        call = _DECIDED.call
        if hooks and call is not None:
            _DECIDED.call = None  # a hook may change what the model's call decided from: test every module
        elif (
            call is not None  # inside the accelerated model's call, which decided the rest (module text)
            and call[0] is self.record
            and type(x) is Tensor
            and x.is_cpu
            and x.dtype in call[1]
            and not module.training
            and not torch.is_grad_enabled()
        ):
            return self._cpu_ops_of(*call[2]) if self.cpu_path else _plain(x)
        if (
            hooks
            or type(x) is not Tensor  # parameters and tensor subclasses: their own dispatch, plain ops
            or torch.is_grad_enabled()  # autograd needs the plain layers
            or module.training  # dropout / drop path may draw masks: the fused path is for inference
            or is_tracing()  # traced / compiled / exported graphs record the plain ops
        ):
            return PLAIN if type(x) is not Tensor else _plain(x)
        if x.device.type == "cpu":  # the input's device, dtype and the autocast state decide the path
            return self._cpu_ops(x)
        if x.is_cuda and self.record.gpu and torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            found = self._gpu.get(dtype)
            if found is None:
                found = self._gpu[dtype] = GpuOps(self, dtype, self.float32_norms)
            return found
        return PLAIN

    def _cpu_ops(self, x: Tensor) -> Ops:
        """The CPU path's operations for ``x`` in the autocast state now, or the plain ones."""
        dtype = cpu_call_dtype(self.record, x) if self.cpu_path else None
        if dtype is None:
            return _plain(x)
        return self._cpu_ops_of(dtype, torch.is_autocast_enabled("cpu"))

    def _cpu_ops_of(self, dtype: torch.dtype, autocast: bool) -> cpu.CpuOps:
        """This module's CPU operations computing in ``dtype`` (``autocast``: under CPU bf16 autocast), made once."""
        found = self._cpu.get((dtype, autocast))
        if found is None:
            found = self._cpu[dtype, autocast] = cpu.CpuOps(self, dtype, autocast)
        return found

    def __repr__(self) -> str:
        return f"AcceleratedOps({self.record!r})"


def cpu_call_dtype(record: Acceleration, x: Tensor) -> torch.dtype | None:
    """What a CPU-path call on ``x`` computes in, in the CPU autocast state now; None: the plain modules
    (other dtypes, float16 autocast, bfloat16 where the fused bf16 kernels do not run)."""
    if not torch.is_autocast_enabled("cpu"):
        if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and record.precision != "float32"):
            return record.cpu_dtype(False)
        return None
    if torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16):
        return record.cpu_dtype(True)
    return None


class AcceleratedPyramidVisionTransformer(PyramidVisionTransformer):
    """:class:`~pvt.models.model.PyramidVisionTransformer` that runs CPU batches in pieces
    (:func:`pvt.accel.cpu.piece_size`), runs bfloat16 as the plain modules under CPU autocast where
    :meth:`Acceleration.plain_autocast` says so, and hands float32 features to the head. Its stages,
    patch embeddings and blocks carry :class:`AcceleratedOps`; ``acceleration`` is the one record."""

    acceleration: Acceleration

    def _cpu_call(self, x: Tensor) -> tuple[bool, int | None]:
        """Whether ``x`` takes the CPU path (the same tests as :meth:`AcceleratedOps.pick`, once per model
        call) and its images per piece (None: the whole batch at once)."""
        record = self.acceleration
        if (not record.cpu or type(x) is not Tensor or x.ndim != 4 or x.device.type != "cpu"
                or torch.is_grad_enabled() or self.training or is_tracing()):
            return False, None
        dtype = cpu_call_dtype(record, x)
        if dtype is None and not record.plain_autocast():
            return False, None
        size = cpu.piece_size(self, x.shape[0], x.shape[-2], x.shape[-1], record.piece_budget(),
                              (dtype or torch.bfloat16).itemsize)
        if size is not None and hooked(tuple(self.modules())):  # pieces would change what every hook sees
            size = None
        if size is not None:
            self._check_input(x)  # errors name the whole batch, not a piece
        return True, size

    def _autocast(self, on_cpu_path: bool):
        """CPU bf16 autocast around the plain modules where the record says bfloat16 runs that way."""
        if on_cpu_path and self.acceleration.plain_autocast() and not torch.is_autocast_enabled("cpu"):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def _decide(self, x: Tensor, on_cpu_path: bool):
        """Hand this call's decision to the modules for its length (see the module text): the CPU path's
        operations for ``x``'s dtype in the autocast state now, or none (the modules test for themselves)."""
        record = self.acceleration
        dtype = cpu_call_dtype(record, x) if on_cpu_path and cpu.FUSED_OPS else None
        if dtype is None or _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
            yield
            return
        autocast = torch.is_autocast_enabled("cpu")
        # the input dtypes for which cpu_call_dtype gives the same dtype: one module hands the next bf16
        inputs = (torch.float32, torch.bfloat16) if autocast or record.precision != "float32" else (torch.float32,)
        outer, _DECIDED.call = _DECIDED.call, (record, inputs, (dtype, autocast))
        try:
            yield
        finally:
            _DECIDED.call = outer

    def _features(self, x: Tensor, on_cpu_path: bool) -> Tensor:
        with self._autocast(on_cpu_path), self._decide(x, on_cpu_path):
            out = PyramidVisionTransformer.forward_features(self, x)
        return out.float() if on_cpu_path else out  # the head gets float32 (or autocast's)

    def _maps(self, x: Tensor, on_cpu_path: bool) -> list[Tensor]:
        with self._autocast(on_cpu_path), self._decide(x, on_cpu_path):
            maps = PyramidVisionTransformer.forward_pyramid(self, x)
        return [m.float() for m in maps] if on_cpu_path else maps

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        on_cpu, size = self._cpu_call(x)
        if size is None:
            return self._maps(x, on_cpu)
        parts = [self._maps(piece, on_cpu) for piece in x.split(size)]
        return [torch.cat(maps) for maps in zip(*parts)]

    def forward_features(self, x: Tensor) -> Tensor:
        on_cpu, size = self._cpu_call(x)
        if size is None:
            return self._features(x, on_cpu)
        return torch.cat([self._features(piece, on_cpu) for piece in x.split(size)])

    def forward(self, x: Tensor) -> Tensor:
        on_cpu, size = self._cpu_call(x)
        if size is None:
            return self.forward_head(self._features(x, on_cpu))
        return torch.cat([self.forward_head(self._features(piece, on_cpu)) for piece in x.split(size)])

