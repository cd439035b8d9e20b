"""Dense prediction on PVT backbones: RetinaNet, Mask R-CNN (torchvision) and Semantic FPN.

Every (head, backbone) pair of the paper's Tables 3 and 5 is a named model::

    >>> from pvt.dense import create_dense_model, list_dense_models
    >>> list_dense_models("semfpn_*")[:2]
    ['semfpn_pvt_v1_tiny', 'semfpn_pvt_v1_small']
    >>> model = create_dense_model("retinanet_pvt_v2_b0", num_classes=80, pretrained="pvt_v2_b0.pth")

Counting FLOPs (``pvt.count_flops``), per model family:

* ``semfpn_*``: the whole model on a ``(1, 3, 512, 512)`` tensor (Table 5's convention).
* ``retinanet_*`` / ``maskrcnn_*``: ``model.forward_dummy`` on a ``(1, 3, H, W)`` tensor (backbone,
  FPN and the dense head; no resizing, NMS or RoI heads), as mmdet's ``get_flops`` does.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..naming import unknown_name
from ..variants import VARIANTS

__all__ = ["DenseModelSpec", "DENSE_MODELS", "create_dense_model", "list_dense_models", "get_dense_spec"]

HEADS = {"retinanet": "detection", "maskrcnn": "instance", "semfpn": "segmentation"}


@dataclass(frozen=True)
class DenseModelSpec:
    """One named dense-prediction model: a head on a backbone variant, and the paper's figures."""

    name: str
    head: str
    """``retinanet``, ``maskrcnn`` or ``semfpn``."""
    backbone: str
    task: str
    """``detection``, ``instance`` or ``segmentation`` (the engine's task name)."""
    paper_params_m: float | None
    paper_gflops: float | None
    """Table 5's GFLOPs at 512x512 (Semantic FPN only)."""
    paper_metric: float | None
    """Table 3's AP (box AP for Mask R-CNN) or Table 5's mIoU."""
    default_num_classes: int

    def build(self, **kwargs: Any) -> nn.Module:
        return _builder(self.head)(self.backbone, **kwargs)


def _builder(head: str) -> Callable[..., nn.Module]:
    if head == "retinanet":
        from .retinanet import retinanet

        return retinanet
    if head == "maskrcnn":
        from .mask_rcnn import maskrcnn

        return maskrcnn
    from .semantic_fpn import semantic_fpn

    return semantic_fpn


def _specs() -> dict[str, DenseModelSpec]:
    out: dict[str, DenseModelSpec] = {}
    for head, task in HEADS.items():
        for backbone, v in VARIANTS.items():
            p = v.paper
            figures = {
                "retinanet": (p.retinanet_params_m, None, p.retinanet_ap, 80),
                "maskrcnn": (p.maskrcnn_params_m, None, p.maskrcnn_ap_box, 80),
                "semfpn": (p.semfpn_params_m, p.semfpn_gflops, p.semfpn_miou, 150),
            }[head]
            name = f"{head}_{backbone}"
            out[name] = DenseModelSpec(name, head, backbone, task, *figures)
    return out


DENSE_MODELS: dict[str, DenseModelSpec] = _specs()


def list_dense_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Names of the dense-prediction models matching ``pattern`` (and ``task`` when given)."""
    return [n for n, s in DENSE_MODELS.items() if fnmatch.fnmatch(n, pattern) and (task is None or s.task == task)]


def get_dense_spec(name: str) -> DenseModelSpec:
    """The spec for ``name``; an unknown name raises a ValueError suggesting close names."""
    try:
        return DENSE_MODELS[name]
    except KeyError:
        raise unknown_name(
            "dense-prediction model", name, DENSE_MODELS,
            f"names are <head>_<backbone> with heads {', '.join(HEADS)} (see list_dense_models())",
        ) from None


def create_dense_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a named dense-prediction model, e.g. ``create_dense_model("semfpn_pvt_v2_b2")``.

    Keyword arguments go to the builder: ``num_classes``, ``pretrained`` (a classification
    checkpoint for the backbone; its head is dropped), ``drop_path_rate``, and for detectors
    ``min_size`` / ``max_size``.
    """
    spec = get_dense_spec(name)
    kwargs.setdefault("num_classes", spec.default_num_classes)
    model = spec.build(**kwargs)
    model.dense_model_name = name
    return model
