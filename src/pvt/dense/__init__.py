"""Dense-prediction networks on PVT backbones: necks, heads and detectors (no training code).

* :mod:`.backbone`: the PVT stage maps as an ordered dict, the FPN necks, P6/P7 levels.
* :mod:`.retinanet`, :mod:`.mask_rcnn`: torchvision's detectors over a PVT + FPN; :mod:`.anchors`.
* :mod:`.atss`, :mod:`.gfl`: the one-stage detectors of Table 4, on what :mod:`.one_stage` shares (neck,
  GroupNorm head, one anchor per location, the contract); :mod:`.assigners` (ATSS assignment) and
  :mod:`.losses` (Quality / Distribution Focal Loss, centerness) are theirs.
* :mod:`.cascade_mask_rcnn`: Cascade Mask R-CNN (Table 4) from torchvision's parts and our cascade of box and
  mask heads; :mod:`.sparse_rcnn`: Sparse R-CNN (Table 4), learned proposals refined by six dynamic
  stages; :mod:`.inputs`: checks of a detector's input images.
* :mod:`.semantic_fpn`: Semantic FPN for segmentation; :mod:`.segformer`: SegFormer's All-MLP head;
  :mod:`.glpn`: GLPN's depth decoder; :mod:`.hf`: transformers' Segformer and GLPN folders both ways.
* :mod:`.zoo`: every (head, backbone) pair as a named model; :mod:`.paper`: the paper's figures for them.

Training, evaluation and prediction of these models are the tasks of :mod:`pvt.tasks`.
"""

from .zoo import DENSE_MODELS, HEADS, DenseModelSpec, Head, create_dense_model, get_dense_spec, list_dense_models

__all__ = ["DENSE_MODELS", "HEADS", "DenseModelSpec", "Head", "create_dense_model", "get_dense_spec",
           "list_dense_models"]
