"""The Python API of the classification path: :func:`train`, :func:`evaluate`, :func:`predict`.

The ``pvt train / eval / predict / demo`` commands only wrap these::

    import pvt
    run = pvt.train(epochs=10)                        # built-in digits, PVTv2-B0; returns a TrainResult
    pvt.evaluate(run.best_checkpoint)                 # {"top1": ..., "top5": ..., "loss": ..., ...}
    pvt.predict(run.best_checkpoint, ["a.png"], topk=3)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["train", "evaluate", "predict", "load_classifier", "Classifier"]


def train(config: Any = None, *, resume: str | Path | None = None, quiet: bool = False, **overrides: Any):
    """Train a model; returns a :class:`pvt.engine.trainer.TrainResult` (run folder, metrics, best epoch).

    Args:
        config: a :class:`~pvt.engine.config.TrainConfig`, a mapping of its keys, or a YAML file path.
        resume: a run folder to continue (its ``config.yaml`` is used; ``overrides`` may extend ``epochs``).
        quiet: no progress bar or per-epoch lines on stdout (``train.log`` still gets them).
        **overrides: TrainConfig keys, e.g. ``epochs=5, data="my_images/"``.
    """
    from .engine.config import TrainConfig
    from .engine.trainer import Trainer
    from .tasks import create_task, resolve_config

    if resume is not None:
        cfg = Trainer.resume_config(resume, overrides)
    elif isinstance(config, TrainConfig):
        cfg = resolve_config(**{**config.to_dict(), **overrides})
    elif isinstance(config, dict):
        cfg = resolve_config(**{**config, **overrides})
    else:
        cfg = resolve_config(config, **overrides)
    return Trainer(cfg, create_task(cfg), resume=resume, quiet=quiet).fit()


@dataclass
class Classifier:
    """A trained classifier loaded from its checkpoint, with what its metadata says about its input."""

    model: nn.Module
    class_names: list[str]
    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    variant: str
    train_config: dict[str, Any]
    device: torch.device

    def transform(self):
        """The evaluation transform (resize to img_size / crop_pct, centre crop, normalise)."""
        from .data import eval_transform

        return eval_transform(self.img_size, self.crop_pct, self.interpolation, self.mean, self.std)


def load_classifier(checkpoint: str | Path, *, device: str = "auto", model: str | None = None) -> Classifier:
    """Load a checkpoint written by ``pvt train`` (a ``.safetensors`` file or a run folder -> its best).

    ``model``: when given, the checkpoint must be of that variant.
    """
    from .accel import accelerate
    from .config import PVTConfig
    from .engine.distributed import resolve_device
    from .checkpoint import read_own_format
    from .model import PyramidVisionTransformer

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.safetensors" if (path / "best.safetensors").is_file() else path / "last.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    own = read_own_format(path)
    if own is None or "class_names" not in own[1] or "config" not in own[1]:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a classifier written by pvt train (expected a .safetensors file "
            "with format=pvt, config and class_names metadata)"
        )
    state, meta = own
    variant = meta.get("variant", "?")
    if model is not None and variant != model:
        raise ValueError(f"checkpoint {str(path)!r} holds {variant!r}, not the requested model {model!r}")
    cfg = PVTConfig.from_dict(meta["config"]).replace(drop_path_rate=0.0, drop_rate=0.0)
    net = PyramidVisionTransformer(cfg)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(path)!r} does not match its own config: {str(e).splitlines()[0]}") from None
    accelerate(net)
    dev = resolve_device(device)
    net.to(dev).eval()
    return Classifier(
        net, list(meta["class_names"]), int(meta.get("img_size", cfg.img_size)), float(meta.get("crop_pct", 0.875)),
        str(meta.get("interpolation", "bicubic")), tuple(meta.get("mean", (0.485, 0.456, 0.406))),
        tuple(meta.get("std", (0.229, 0.224, 0.225))), variant, dict(meta.get("train_config", {})), dev,
    )


def _eval_folder(clf: Classifier, data: str | Path | None, split: str) -> Path:
    from .data import digits_folder

    if data is None:
        tc = clf.train_config
        if tc.get("data") is None:  # trained on the built-in digits
            return digits_folder(tc.get("data_dir")) / split
        data = tc["data"]
    root = Path(data).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    if (root / split).is_dir():
        return root / split
    if not root.is_dir():
        raise ValueError(f"data {str(root)!r} is not a folder; expected a folder with {split}/ or class folders")
    return root


def evaluate(checkpoint: str | Path, data: str | Path | None = None, *, split: str = "val", batch_size: int = 64,
             device: str = "auto", workers: int = 0, model: str | None = None) -> dict[str, Any]:
    """Top-1 / top-5 (%) and mean cross-entropy of a trained classifier on ``data``.

    ``data``: a folder with ``<split>/<class>/`` images or directly ``<class>/`` folders; default: the
    checkpoint's own training data (its held-out split). Class folders must be among the checkpoint's
    classes. Uses the paper's evaluation transform at the checkpoint's image size.
    """
    from torch.utils.data import DataLoader

    from .data import ImageFolderDataset, collate_skipping
    from .tasks.classification import topk_correct

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
    clf = load_classifier(checkpoint, device=device, model=model)
    folder = _eval_folder(clf, data, split)
    ds = ImageFolderDataset(folder, clf.transform(), class_names=clf.class_names, require_all=False)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping)
    n = loss_sum = c1 = c5 = 0
    skipped = len(ds.unreadable)
    with torch.no_grad():
        for images, targets, sk in loader:
            skipped += sk
            if len(targets) == 0:
                continue
            logits = clf.model(images.to(clf.device)).float().cpu()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            a, b = topk_correct(logits, targets, (1, 5))
            c1, c5, n = c1 + a, c5 + b, n + len(targets)
    if n == 0:
        raise ValueError(f"data folder {str(folder)!r} has no readable images")
    return {
        "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "images": n,
        "skipped_images": skipped, "checkpoint": str(checkpoint), "data": str(folder), "model": clf.variant,
        "img_size": clf.img_size,
    }


def predict(checkpoint: str | Path | Classifier, images: Sequence[str | Path], *, topk: int = 5,
            device: str = "auto") -> list[dict[str, Any]]:
    """Top-``topk`` classes of each image: ``[{"image": path, "top": [{"class", "index", "prob"}, ...]}]``."""
    from PIL import UnidentifiedImageError

    from .data import load_rgb

    if isinstance(images, (str, Path)):
        images = [images]
    if not images:
        raise ValueError("no images given; pass one or more image paths")
    if topk < 1:
        raise ValueError(f"topk={topk!r}: expected an integer >= 1")
    for p in images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image {str(p)!r} does not exist")
    clf = checkpoint if isinstance(checkpoint, Classifier) else load_classifier(checkpoint, device=device)
    tf = clf.transform()
    batch = []
    for p in images:
        try:
            batch.append(tf(load_rgb(p)))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"image {str(p)!r} cannot be read: {e}") from None
    with torch.no_grad():
        probs = clf.model(torch.stack(batch).to(clf.device)).float().softmax(-1).cpu()
    k = min(topk, probs.shape[1])
    out = []
    for p, row in zip(images, probs):
        val, idx = row.topk(k)
        out.append({"image": str(p), "top": [
            {"class": clf.class_names[i], "index": int(i), "prob": float(v)} for v, i in zip(val.tolist(), idx.tolist())
        ]})
    return out
