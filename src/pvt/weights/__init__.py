"""Weights from and to every PVT ecosystem: detect a checkpoint's format, convert it, load it; write a
model in any of them.

* :func:`create_pretrained` (what ``pvt.create_model(name, pretrained=...)`` calls) and
  :func:`load_checkpoint` take a file, a folder or ``hf-hub:<repo id>``.
* :func:`export_weights` (:mod:`pvt.weights.writing`, what ``pvt convert --to`` calls) writes a model in
  this library's, HF transformers', timm's, the official or OpenMMLab's layout;
  :mod:`pvt.tools.publish` is the folder and model card ``pvt push`` uploads.
* :func:`load_into` (:mod:`pvt.weights.hf_models`) loads a checkpoint into the PVT inside any HF
  transformers model (a classifier, a detector's ``PvtV2Backbone``).
* :mod:`pvt.weights.keys`: pure state-dict conversions between this library's names and the
  official (whai362/PVT), timm, HF transformers and OpenMMLab names: one rule table per format, applied
  both ways by one engine (:func:`to_pvt`, :func:`from_pvt`), so no direction is written twice.
* :mod:`pvt.weights.hf_config`: HF ``config.json`` fields and :class:`~pvt.models.config.PVTConfig`, both ways.
* :mod:`pvt.weights.files`: reading files, containers and folders safely (nothing is executed).
* :mod:`pvt.weights.shapes`: which registered variant a state dict's shapes describe.
* :mod:`pvt.weights.run_folder`: the run folder of ``pvt train`` (:class:`~pvt.weights.run_folder.RunFolder`:
  file names, commit order, reading a run back).
* :mod:`pvt.weights.formats`: the names of the layouts read and written (no torch).
"""

from ..base.lazy import lazy_attributes

_HOMES = {
    "Checkpoint": "files",
    "read_checkpoint": "files",
    "hf_config_to_pvt": "hf_config",
    "pvt_to_hf_config": "hf_config",
    "LoadedInto": "hf_models",
    "load_into": "hf_models",
    "EXPORT_FORMATS": "formats",
    "FORMATS": "formats",
    "detect_key_format": "keys",
    "from_pvt": "keys",
    "to_pvt": "keys",
    "LoadReport": "loading",
    "create_pretrained": "loading",
    "load_checkpoint": "loading",
    "infer_architecture": "shapes",
    "matching_variants": "shapes",
    "export_weights": "writing",
}
"""Where each public name lives: loaded on first use, so the torch-free :mod:`pvt.weights.formats` (the
format names ``pvt convert --help`` lists) imports without torch."""

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "Checkpoint",
    "LoadReport",
    "LoadedInto",
    "create_pretrained",
    "detect_key_format",
    "export_weights",
    "from_pvt",
    "hf_config_to_pvt",
    "infer_architecture",
    "load_checkpoint",
    "load_into",
    "matching_variants",
    "pvt_to_hf_config",
    "read_checkpoint",
    "to_pvt",
]

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
