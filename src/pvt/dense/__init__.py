"""Dense-prediction networks on PVT backbones: necks, heads and detectors (no training code).

* :mod:`.backbone`: the PVT stage maps as an ordered dict, the FPN necks, P6/P7 levels.
* :mod:`.retinanet`, :mod:`.mask_rcnn`: torchvision's detectors over a PVT + FPN; :mod:`.anchors`.
* :mod:`.semantic_fpn`: Semantic FPN for segmentation.
* :mod:`.zoo`: every (head, backbone) pair of the paper's tables as a named model.

Training, evaluation and prediction of these models are the tasks of :mod:`pvt.tasks`.
"""

from .zoo import DENSE_MODELS, DenseModelSpec, create_dense_model, get_dense_spec, list_dense_models

__all__ = ["DENSE_MODELS", "DenseModelSpec", "create_dense_model", "get_dense_spec", "list_dense_models"]
