"""pvt: the Pyramid Vision Transformer (PVT v1 and v2) family, its weights, FLOPs and tasks."""

from .config import PVTConfig
from .model import PyramidVisionTransformer
from .registry import create_model, list_models
from .variants import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "PVTConfig",
    "PyramidVisionTransformer",
    "Variant",
    "VARIANTS",
    "create_model",
    "get_variant",
    "list_models",
    "load_checkpoint",
    "count_flops",
    "tune_cpu_allocator",
    "accelerate",
    "quantize",
    "attention_maps",
]


def __getattr__(name: str):
    # heavier modules load on first use
    if name == "load_checkpoint":
        from .weights import load_checkpoint

        return load_checkpoint
    if name == "count_flops":
        from .flops import count_flops

        return count_flops
    if name == "tune_cpu_allocator":
        from .accel.runtime import tune_cpu_allocator

        return tune_cpu_allocator
    if name == "accelerate":
        from .accel import accelerate

        return accelerate
    if name == "attention_maps":
        from .attention import attention_maps

        return attention_maps
    if name in ("train", "evaluate", "predict", "quantize"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pvt' has no attribute {name!r}")
