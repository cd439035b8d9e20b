"""pvt: the Pyramid Vision Transformer (PVT v1 and v2) family, its weights, FLOPs and tasks."""

from .base.lazy import lazy_attributes

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


_HOMES = {
    "PVTConfig": "models.config",
    "PyramidVisionTransformer": "models.model",
    "create_model": "models.registry",
    "list_models": "models.registry",
    "VARIANTS": "models.variants",
    "Variant": "models.variants",
    "get_variant": "models.variants",
    "load_checkpoint": "weights",
    "count_flops": "tools.flops",
    "tune_cpu_allocator": "accel.runtime",
    "accelerate": "accel",
    "attention_maps": "models.attention",
    "train": "api",
    "evaluate": "api",
    "predict": "api",
    "quantize": "api",
}
"""Where each public name lives. Everything loads on first use, so ``import pvt`` (and the ``pvt``
command's ``--help``) costs no torch import until a model is asked for."""

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
