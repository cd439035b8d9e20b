"""What this CPU computes natively, and the inference precision that follows: ``--precision auto``.

bfloat16 pays on a CPU only where the hardware multiplies bf16 (AVX-512 BF16's ``vdpbf16ps``, or AMX
tiles): elsewhere oneDNN and ATen emulate it through conversions and a bf16 forward runs many times
slower than float32 (docs/speed.md has the figure measured on a Zen 3). int8 matrix products are fast
with VNNI (``vpdpbusd``: AVX-512 VNNI, AVX-VNNI, AMX-INT8); without it oneDNN's u8 x s8 products go
through 16-bit sums that can saturate, so activations are then quantised to 7 bits
(:mod:`pvt.accel.quant`).

Whether oneDNN's fused bfloat16 kernels run at all is a third question (:func:`bf16_kernels`): they need
AVX-512 BW/VL/DQ or AVX-NE-CONVERT (emulating bf16 where the CPU does not multiply it). On an AVX2-only
CPU such as a Zen 3 they refuse to build, so bfloat16 there runs as the plain model under CPU autocast
and int8's surrounding work stays float32.

The flags come from ``/proc/cpuinfo`` (Linux); elsewhere from PyTorch's own detection
(``torch.backends.cpu.get_cpu_capability()``, which names the widest vector ISA ATen dispatches to but
not bf16 arithmetic: there only AMX implies bf16). Every decision here takes ``flags=`` (default: this
CPU's), and tests replace :func:`cpu_flags` or pass ``flags`` to play CPUs with fewer capabilities;
what this PyTorch's kernels really do on this CPU is tried once (:func:`pvt.accel.cpu.kernels_fail`).
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["PRECISIONS", "bf16_kernels", "cpu_flags", "cpu_model", "has_bf16", "has_vnni", "resolve_precision"]

PRECISIONS = ("float32", "bfloat16", "int8")
"""The inference precisions of the CPU path (``auto`` resolves to one of the first two)."""

_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "i8": "int8"}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_VNNI_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8")
_BF16_KERNEL_FLAGS = (frozenset({"avx512bw", "avx512vl", "avx512dq"}), frozenset({"avx_ne_convert"}))
"""Either set lets oneDNN build its bf16 kernels (PyTorch's own check before its fused bf16 operators)."""


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case (``avx512_bf16``, ``amx_bf16``, ``avx512_vnni``, ...)."""
    flags = _proc_cpuinfo().get("flags")
    if flags:
        return frozenset(flags.lower().split())
    import torch

    capability = torch.backends.cpu.get_cpu_capability().lower()  # "default", "avx2", "avx512", "amx"?
    found = {capability}
    if "amx" in capability:
        found |= {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"}
    return frozenset(found)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    name = _proc_cpuinfo().get("model name")
    if name:
        return name
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in _BF16_FLAGS)


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has 8-bit dot products that cannot saturate (AVX-512 VNNI, AVX-VNNI, AMX-INT8)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in _VNNI_FLAGS)


def bf16_kernels(flags: frozenset[str] | None = None) -> str | None:
    """None where the CPU path's fused bfloat16 kernels run here, else why not (one line).

    ``flags`` first (native bf16 implies the AVX-512 subsets); then, whatever the flags say, what this
    PyTorch's oneDNN really does on this CPU (tried once per process): emulated flags can take a
    capability away, never add one."""
    flags = cpu_flags() if flags is None else flags
    if not (has_bf16(flags) or any(need <= flags for need in _BF16_KERNEL_FLAGS)):
        return "this CPU has neither avx512bw/avx512vl/avx512dq nor avx_ne_convert, which oneDNN's fused bfloat16 kernels need"
    import torch

    from .cpu import kernels_fail

    return kernels_fail(torch.bfloat16)


def resolve_precision(requested: str, device: str = "cpu", flags: frozenset[str] | None = None) -> tuple[str, str]:
    """``(precision, reason)`` for a requested ``float32`` / ``bfloat16`` / ``int8`` / ``auto`` (aliases
    fp32, bf16) on ``device``.

    ``auto`` picks bfloat16 on a CUDA device and on a CPU with native bf16 arithmetic, float32 on every
    other CPU (never int8: that changes results beyond rounding, so it is only taken when asked for).
    An explicit request is kept as it is; the reason then says when it will be slow here.
    """
    wanted = _ALIASES.get(requested.strip().lower(), requested.strip().lower())
    if wanted not in (*PRECISIONS, "auto"):
        raise ValueError(f"unknown precision {requested!r}; choose from auto, {', '.join(PRECISIONS)} (or fp32, bf16)")
    on_cpu = str(device).split(":")[0] == "cpu"
    if not on_cpu:
        if wanted == "int8":
            raise ValueError(f"int8 inference is a CPU path; device {device!r} takes float32 or bfloat16")
        if wanted == "auto":
            return "bfloat16", f"auto: {device} runs bfloat16 under autocast"
        return wanted, "requested"
    if wanted == "int8":
        import torch

        from .cpu import kernels_fail

        cannot = kernels_fail(torch.float32, int8=True)
        if cannot:
            raise ValueError(f"int8 cannot run here: {cannot}; choose float32 or bfloat16")
    flags = cpu_flags() if flags is None else flags
    bf16 = has_bf16(flags)
    native = [f for f in _BF16_FLAGS if f in flags]
    if wanted == "auto":
        if bf16:
            return "bfloat16", f"auto: this CPU has {'/'.join(native)}"
        return "float32", "auto: this CPU has no native bfloat16 arithmetic (avx512_bf16 / amx_bf16), bfloat16 would be slower"
    if wanted == "bfloat16" and not bf16:
        if bf16_kernels(flags) is not None:
            return wanted, ("requested; this CPU has no native bfloat16 arithmetic nor oneDNN's fused bf16 kernels, "
                            "so it runs as the plain model under CPU autocast, emulated and slow")
        return wanted, "requested; this CPU has no native bfloat16 arithmetic, so it runs emulated and slow"
    if wanted == "int8" and not has_vnni(flags):
        return wanted, "requested; this CPU has no VNNI: 7-bit activations, slower int8 products"
    return wanted, "requested"
