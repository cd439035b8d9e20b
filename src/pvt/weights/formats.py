"""The names of the weight layouts this library reads and writes, with a line on each: plain data, no torch,
so ``pvt convert --help`` lists them without loading the code that converts them (:mod:`pvt.weights.keys`
holds each read layout's rules, :mod:`pvt.weights.writing` the writers)."""

from __future__ import annotations

__all__ = ["EXPORT_FORMATS", "FORMATS"]

FORMATS: dict[str, str] = {
    "pvt": "this library's own names",
    "official": "whai362/PVT classification checkpoint (v1 or v2 names)",
    "timm": "timm pvt_v2_* state dict",
    "hf_v2": "HF transformers PvtV2Model / PvtV2ForImageClassification",
    "hf_v1": "HF transformers PvtModel / PvtForImageClassification",
    # v1 before v2: a v1 state dict shows v2's signature too (keys.LAYOUTS is checked in this order)
    "mm_v1": "OpenMMLab PVT v1 backbone (mmdet PyramidVisionTransformer)",
    "mm_v2": "OpenMMLab PVT v2 backbone (mmdet PyramidVisionTransformerV2)",
}
"""The layouts a checkpoint's keys are read in (:func:`pvt.weights.keys.detect_key_format`), in the order
they are tried."""

EXPORT_FORMATS: dict[str, str] = {
    "pvt": "this library's own format: one .safetensors file with the config in its metadata",
    "hf": "HF transformers folder: config.json, model.safetensors, preprocessor_config.json",
    "timm": "model.safetensors in timm's pvt_v2_* names and timm's config.json beside it",
    "official": "whai362/PVT checkpoint: {'model': state_dict} (.pth)",
    "mmdet": "OpenMMLab PVT backbone: {'state_dict': backbone.* and bare names, 'meta'} (.pth), for load_from "
             "and for the backbone's init_cfg",
    "mmseg": "OpenMMLab PVT backbone, as mmdet (mmsegmentation configs use mmdet's PVT backbones)",
}
"""The formats :func:`pvt.weights.writing.export_weights` writes (``pvt convert --to``), with what each is."""
