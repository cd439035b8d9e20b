"""Every dense-prediction model of the papers as a name: ``<head>_<backbone>``, one scheme for all heads.

    >>> from pvt.dense import create_dense_model, list_dense_models
    >>> list_dense_models("semfpn_*")[:2]
    ['semfpn_pvt_v1_tiny', 'semfpn_pvt_v1_small']
    >>> model = create_dense_model("retinanet_pvt_v2_b0", num_classes=80, pretrained="pvt_v2_b0.pth")

A :class:`Head` says what a head is: its training task, its builder, the paper's data set size and how
the paper counted its FLOPs (``pvt.count_flops(model, head.flops_input, method=head.flops_method)``:
Semantic FPN runs whole on 512x512; detectors run ``forward_dummy`` on 800x1280, as mmdet's
``get_flops`` does). Every head goes on every backbone of the family; the paper's figures, where it has
them, come from :mod:`pvt.dense.paper`.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..base.naming import unknown_name
from ..models.variants import VARIANTS
from .paper import DenseFigures, paper_figures

__all__ = ["Head", "HEADS", "DenseModelSpec", "DENSE_MODELS", "create_dense_model", "list_dense_models",
           "get_dense_spec"]


@dataclass(frozen=True)
class Head:
    """One kind of dense-prediction model, to be put on any PVT backbone."""

    name: str
    task: str
    """The training task that trains it: ``detection``, ``instance``, ``segmentation`` or ``depth``."""
    builder: str
    """``module:function`` in :mod:`pvt.dense` building it: ``function(backbone_name, num_classes=..., ...)``."""
    num_classes: int
    """Classes of the paper's data set (COCO 80, ADE20K 150), the default."""
    flops_input: tuple[int, int]
    """``(H, W)`` the paper counted FLOPs at."""
    flops_method: str | None
    """The model method the FLOPs are counted on (None: the whole forward)."""
    anchor_size: int | None
    """The paper's smallest anchor in pixels, when the builder takes ``anchor_size`` (None: anchor-free)."""
    description: str
    recipe: tuple[tuple[str, Any], ...] = ()
    """TrainConfig values of the paper's recipe for this head where they differ from its task's defaults
    (e.g. Table 4's 3x schedule: ``(("epochs", 36),)``), and task options it turns on (``("crop", True)``)."""
    multiscale: tuple[int, int] | None = None
    """The paper's multi-scale training range of the shorter side at the 800 px scale (None: one scale)."""

    def build(self, backbone: str, **kwargs: Any) -> nn.Module:
        module, _, function = self.builder.partition(":")
        build: Callable[..., nn.Module] = getattr(importlib.import_module(module), function)
        return build(backbone, **kwargs)


HEADS: dict[str, Head] = {h.name: h for h in [
    Head("retinanet", "detection", "pvt.dense.retinanet:retinanet", 80, (800, 1280), "forward_dummy", 32,
         "RetinaNet (Table 3)"),
    Head("mask_rcnn", "instance", "pvt.dense.mask_rcnn:mask_rcnn", 80, (800, 1280), "forward_dummy", 32,
         "Mask R-CNN (Table 3)"),
    # the official cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16 config: AdamW 1e-4, weight decay 0.05
    # (not on norms), 36 epochs (x0.1 at 27, 33), shorter side 480-800 or the DETR crop policy
    Head("cascade_mask_rcnn", "instance", "pvt.dense.cascade_mask_rcnn:cascade_mask_rcnn", 80, (800, 1280),
         "forward_dummy", 32, "Cascade Mask R-CNN (Table 4)",
         recipe=(("epochs", 36), ("weight_decay", 0.05), ("crop", True)), multiscale=(480, 800)),
    Head("atss", "detection", "pvt.dense.atss:atss", 80, (800, 1280), "forward_dummy", 64,
         "ATSS (Table 4)", recipe=(("epochs", 36), ("weight_decay", 0.05), ("crop", True)),
         multiscale=(480, 800)),
    Head("gfl", "detection", "pvt.dense.gfl:gfl", 80, (800, 1280), "forward_dummy", 64,
         "GFL (Table 4)", recipe=(("epochs", 36), ("weight_decay", 0.05), ("crop", True)),
         multiscale=(480, 800)),
    # the official sparse_rcnn_pvt_v2_b2_fpn_300_proposals_crop_mstrain_480-800_3x_coco config: AdamW
    # 2.5e-5 / 1.4, weight decay 1e-4, gradient norm clipped at 1, 1 image per GPU, 36 epochs, the same crop
    Head("sparse_rcnn", "detection", "pvt.dense.sparse_rcnn:sparse_rcnn", 80, (800, 1280), "forward_dummy", None,
         "Sparse R-CNN (Table 4)",
         recipe=(("epochs", 36), ("lr", 2.5e-5 / 1.4), ("weight_decay", 1e-4), ("clip_grad", 1.0), ("batch_size", 1),
                 ("crop", True)), multiscale=(480, 800)),
    Head("semfpn", "segmentation", "pvt.dense.semantic_fpn:semantic_fpn", 150, (512, 512), None, None,
         "Semantic FPN (Table 5)"),
    # the official SegFormer ADE20K configs: AdamW 6e-5, weight decay 0.01, head lr x10 (the model's lr_scales),
    # poly power 1 after a 1500-iteration warm-up from 1e-6 of the lr, 160k iterations at batch 16 (~127 epochs), whole-image test
    Head("segformer", "segmentation", "pvt.dense.segformer:segformer", 150, (512, 512), None, None,
         "SegFormer All-MLP head (SegFormer Table 2)",
         recipe=(("lr", 6e-5), ("weight_decay", 0.01), ("epochs", 127), ("warmup_epochs", 1.2), ("warmup_lr", 6e-11),
                 ("poly_power", 1.0))),
    Head("glpn", "depth", "pvt.dense.glpn:glpn", 1, (480, 640), None, None, "GLPN monocular depth (NYU Depth v2)"),
]}
"""The heads by name, in table order."""

@dataclass(frozen=True)
class DenseModelSpec:
    """One named dense-prediction model: a head on a backbone variant, and the paper's figures."""

    name: str
    head: Head
    backbone: str
    paper: DenseFigures | None
    """The paper's figures for this pair (None where no table has it)."""

    @property
    def task(self) -> str:
        return self.head.task

    @property
    def default_num_classes(self) -> int:
        return self.head.num_classes

    @property
    def flops_input(self) -> tuple[int, int]:
        """``(H, W)`` the paper counted this model's FLOPs at: the row's own size, else its head's."""
        return self.paper.size if self.paper and self.paper.size else self.head.flops_input

    @property
    def paper_params_m(self) -> float | None:
        return self.paper.params_m if self.paper else None

    @property
    def paper_gflops(self) -> float | None:
        return self.paper.gflops if self.paper else None

    @property
    def paper_metric(self) -> float | None:
        """Box AP (detectors) or mIoU (Semantic FPN)."""
        return self.paper.metric if self.paper else None

    def build(self, **kwargs: Any) -> nn.Module:
        return self.head.build(self.backbone, **kwargs)


DENSE_MODELS: dict[str, DenseModelSpec] = {
    f"{head.name}_{backbone}": DenseModelSpec(f"{head.name}_{backbone}", head, backbone,
                                              paper_figures(head.name, backbone))
    for head in HEADS.values() for backbone in VARIANTS
}


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

    Keyword arguments go to the head's builder: ``num_classes`` (default: the paper's data set's),
    ``pretrained`` (a classification or dense checkpoint for the backbone; heads and necks are dropped),
    ``drop_path_rate``, and for detectors ``min_size`` / ``max_size`` (and ``anchor_size`` where the head
    has anchors).
    """
    spec = get_dense_spec(name)
    kwargs.setdefault("num_classes", spec.default_num_classes)
    model = spec.build(**kwargs)
    model.dense_model_name = spec.name
    return model
