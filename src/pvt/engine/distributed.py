"""Process-group setup from torchrun's environment, and the device for this process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "barrier", "all_reduce_mean", "gather_objects"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's GPU), else MPS, else CPU; other names must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "mps", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ValueError(f"device {name!r}: expected one of auto, cpu, cuda, cuda:N, mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here; accepted: auto, cpu")
        n = torch.cuda.device_count()
        if name == "cuda":
            return torch.device("cuda", local_rank % n)
        if int(name[5:]) >= n:
            raise ValueError(f"device {name!r}: this machine has {n} CUDA device{'s' if n > 1 else ''} "
                             f"(cuda:0{f' .. cuda:{n - 1}' if n > 1 else ''})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps': MPS is not available here; accepted: auto, cpu")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on
    CUDA, gloo otherwise. Without those variables: one process, no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a float over all processes."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable), in rank order."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
