"""torch.hub entry points, one per registered variant:

    import torch
    model = torch.hub.load("path/to/this/checkout", "pvt_v2_b2", source="local", pretrained="pvt_v2_b2.pth")

(``torch.hub.list`` reads GitHub repositories only, it has no ``source``; the entry points are the
variants: ``pvt.list_models()``, or ``python hubconf.py`` in the checkout prints them.)

Each entry point is ``pvt.create_model(name, ...)``: ``pretrained`` takes a local file or folder in any
format pvt reads, or ``"hf-hub:<repo id>"``; ``True`` means the variant's published weights on the hub
(timm's for v2, HF transformers' for v1); ``False`` / ``None`` random weights. Other keyword arguments
(``num_classes``, ``features_only``, ``out_indices``, ``grad_checkpointing``, ``frozen_stages``, any
PVTConfig field, ...) go to ``create_model``.
"""

import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]

_SRC = str(_Path(__file__).resolve().parent / "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from pvt.models.registry import create_model as _create_model
from pvt.models.variants import VARIANTS as _VARIANTS


def _entry(name):
    variant = _VARIANTS[name]
    hub_id = variant.timm_hub_id or variant.hf_hub_id

    def entry(pretrained=None, **kwargs):
        if pretrained is True:
            pretrained = f"hf-hub:{hub_id}"
        return _create_model(name, pretrained=pretrained or None, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{variant.description} ({name}): pvt.create_model({name!r}, pretrained=..., **kwargs). pretrained: a path, "
        f"'hf-hub:<repo id>', True (hf-hub:{hub_id}) or None (random weights)."
    )
    return entry


for _name in _VARIANTS:
    globals()[_name] = _entry(_name)


if __name__ == "__main__":
    print("\n".join(_VARIANTS))
