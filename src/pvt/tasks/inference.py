"""Load a dense-prediction checkpoint written by ``pvt train --task detection|instance|segmentation``,
evaluate it, and draw its predictions.

    >>> from pvt.tasks.inference import load_dense_model, evaluate_dense, predict_dense
    >>> evaluate_dense("runs/retinanet/best.safetensors")          # {"bbox_mAP": ..., ...}
    >>> predict_dense("runs/retinanet", ["a.jpg"], out_dir="preds")  # PNGs + a list of detections
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["DenseModel", "load_dense_model", "evaluate_dense", "predict_dense", "DENSE_TASKS"]

DENSE_TASKS = ("detection", "instance", "segmentation")


@dataclass
class DenseModel:
    model: nn.Module
    task: Any
    """The engine Task (``pvt.tasks.plugins``) the model was trained with."""
    class_names: list[str]
    device: torch.device
    path: Path


def _resolve(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.safetensors" if (path / "best.safetensors").is_file() else path / "last.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    return path


def checkpoint_task(checkpoint: str | Path) -> str | None:
    """The task a ``pvt train`` checkpoint (file or run folder) records, or None when it records none."""
    from ..checkpoint import read_own_format

    try:
        path = _resolve(checkpoint)
    except FileNotFoundError:
        return None
    own = read_own_format(path)
    return None if own is None else own[1].get("task")


def load_dense_model(checkpoint: str | Path, *, device: str = "auto", data: str | None = None) -> DenseModel:
    """The model of a run folder or ``.safetensors`` (best, else last), in eval mode on ``device``."""
    from ..engine.config import TrainConfig
    from ..engine.distributed import resolve_device
    from . import get_task
    from ..checkpoint import read_own_format

    path = _resolve(checkpoint)
    own = read_own_format(path)
    if own is None or own[1].get("task") not in DENSE_TASKS or "train_config" not in own[1]:
        raise ValueError(f"checkpoint {str(path)!r} is not a detection/instance/segmentation model written by "
                         "pvt train (expected format=pvt metadata with task and train_config)")
    state, meta = own
    tc = dict(meta["train_config"], pretrained=None, device="cpu")
    if data is not None:
        tc["data"] = data
    cfg = TrainConfig.from_dict(tc)
    task = get_task(meta["task"])(cfg)
    task.restore_extra(meta)
    model = task.build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(path)!r} does not match its own config: {str(e).splitlines()[0]}") from None
    dev = resolve_device(device)
    model.to(dev).eval()
    return DenseModel(model, task, list(task.class_names), dev, path)


def evaluate_dense(checkpoint: str | Path, data: str | None = None, *, batch_size: int = 2, device: str = "auto",
                   workers: int = 0) -> dict[str, Any]:
    """Box (and mask) mAP or mIoU of a checkpoint on the validation split of ``data`` (default: the data
    it was trained on). Segmentation adds ``per_class_iou`` (class name -> IoU %)."""
    from torch.utils.data import DataLoader

    dm = load_dense_model(checkpoint, device=device, data=data)
    _, val = dm.task.build_datasets()
    loader = DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=dm.task.collate_fn)
    out: dict[str, Any] = dict(dm.task.evaluate(dm.model, loader, dm.device))
    if dm.task.name == "segmentation":
        out["per_class_iou"] = dict(zip(dm.class_names, dm.task.per_class_iou))
    out.update(images=len(val), checkpoint=str(dm.path), task=dm.task.name)
    return out


def _load_image(path: str | Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {str(p)!r} does not exist")
    try:
        img = Image.open(p).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"image {str(p)!r} cannot be read: {e}") from None
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


@torch.no_grad()
def predict_dense(checkpoint: str | Path | DenseModel, images: Sequence[str | Path], *, out_dir: str | Path | None = None,
                  score_thresh: float = 0.3, device: str = "auto") -> list[dict[str, Any]]:
    """Predict each image; with ``out_dir``, write ``<stem>_pred.png`` (boxes, masks or the colour-coded
    class map over the image). Returns JSON-able records: detections (``class``, ``label``, ``score``,
    ``box`` x1, y1, x2, y2) or, for segmentation, the fraction of pixels per class."""
    from .visualize import draw_detections, draw_segmentation

    if isinstance(images, (str, Path)):
        images = [images]
    if not images:
        raise ValueError("no images given; pass one or more image paths")
    if not 0 <= score_thresh <= 1:
        raise ValueError(f"score_thresh={score_thresh!r}: expected a number in [0, 1]")
    tensors = [_load_image(p) for p in images]
    dm = checkpoint if isinstance(checkpoint, DenseModel) else load_dense_model(checkpoint, device=device)
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    records = []
    for p, img in zip(images, tensors):
        rec: dict[str, Any] = {"image": str(p)}
        if dm.task.name == "segmentation":
            seg = dm.task.predict_logits(dm.model, img, tuple(img.shape[-2:]), dm.device).argmax(0).cpu().numpy()
            counts = np.bincount(seg.reshape(-1), minlength=len(dm.class_names)) / seg.size
            rec["class_fractions"] = {n: round(float(c), 4) for n, c in zip(dm.class_names, counts) if c > 0}
            drawing = draw_segmentation(img, seg, dm.class_names)
        else:
            det = dm.model([img.to(dm.device)])[0]
            keep = det["scores"] >= score_thresh
            boxes = det["boxes"][keep].cpu()
            labels = det["labels"][keep].cpu().tolist()
            scores = det["scores"][keep].cpu().tolist()
            masks = None
            if "masks" in det:
                masks = (det["masks"][keep][:, 0] > 0.5).cpu().numpy()
            rec["detections"] = [
                {"class": dm.class_names[lab], "label": int(lab), "score": round(float(s), 4),
                 "box": [round(float(v), 1) for v in b]}
                for b, lab, s in zip(boxes.tolist(), labels, scores)
            ]
            if masks is not None:
                for d, m in zip(rec["detections"], masks):
                    d["mask_area"] = int(m.sum())
            drawing = draw_detections(img, boxes.tolist(), labels, scores, dm.class_names, masks)
        if out_path is not None:
            from ..io import atomic_write

            target = out_path / f"{Path(p).stem}_pred.png"
            with atomic_write(target, "wb") as f:
                drawing.save(f, format="PNG")
            rec["output"] = str(target)
        records.append(rec)
    return records
