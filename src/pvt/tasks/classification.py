"""Image classification as a training task (:class:`~pvt.engine.task.Task`): ImageFolder data (or the built-in digits),
a PVT with a head for the dataset's classes, DeiT's mixup/cutmix + label-smoothing losses, top-1/top-5."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..base.constants import EVAL_CROP_PCT, EVAL_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD
from ..data import (
    ImageFolderDataset,
    collate_skipping,
    digits_folder,
    eval_transform,
    load_rgb,
    readable_images,
    train_transform,
)
from ..data.shards import ShardDataset, is_shard_folder
from ..engine.task import SKIPPED, StepResult, Task
from ..models.variants import get_variant
from ..weights.checkpoint import build_pvt, read_metadata
from .backbone import apply_backbone_options
from .configs import ClassificationConfig, use_repeated_aug
from .visualize import as_viewable, draw_confusion, draw_image_grid, draw_topk, drawing_names, save_drawing

__all__ = ["ClassificationTask", "PRESETS", "build_classifier", "topk_correct"]

log = logging.getLogger("pvt.train")

_IMAGENET: dict[str, Any] = {
    # DeiT's recipe, as the official PVT code trains ImageNet: AdamW at 5e-4 per 512 images (the linear rule),
    # 300 epochs after 5 of warm-up, cosine to 1e-5; RandAugment, random erasing, mixup / cutmix, label
    # smoothing; 224 crops, evaluated at 224/256; the variant's own stochastic depth and clipping.
    "epochs": 300, "batch_size": 128, "lr": None, "base_lr": 5e-4, "min_lr": 1e-5, "warmup_lr": 1e-6,
    "warmup_epochs": 5.0, "weight_decay": 0.05, "opt_eps": 1e-8, "clip_grad": None, "model_ema": False,
    "model_ema_decay": 0.99996,
    "img_size": 224, "crop_pct": EVAL_CROP_PCT, "interpolation": EVAL_INTERPOLATION, "drop_path": None, "drop": 0.0,
    "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5,
    "aa": "rand-m9-mstd0.5-inc1", "color_jitter": 0.4, "reprob": 0.25, "remode": "pixel", "recount": 1,
    "hflip": 0.5, "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "repeated_aug": None,
}

PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": _IMAGENET,
    # The built-in digits are 1,437 small grayscale training images: train at their own size, without
    # flips (a flipped digit is another symbol), mixup / cutmix or erasing and with milder crops; a short
    # schedule at a higher lr.
    "digits": {**_IMAGENET, "img_size": 32, "epochs": 12, "batch_size": 64, "lr": 2e-3, "warmup_epochs": 2.0,
               "hflip": 0.0, "scale": [0.5, 1.0], "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0},
}
"""The classification recipes: ``imagenet`` for a data folder, ``digits`` for the built-in digits."""


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...]) -> list[int]:
    """Number of rows of ``logits (B, K)`` whose target is among the top-k, for each k (k clipped to K)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == targets[:, None]
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def build_classifier(model_name: str, num_classes: int, *, img_size: int, drop_path: float, drop: float,
                     pretrained: str | None = None) -> nn.Module:
    """A PVT variant with ``num_classes`` outputs; from ``pretrained`` weights (new head) when given."""
    from ..models.registry import create_model

    if pretrained is None:
        return create_model(model_name, num_classes=num_classes, drop_path_rate=drop_path, drop_rate=drop,
                            img_size=img_size)
    path = Path(pretrained)
    if not str(pretrained).startswith("hf-hub:") and not path.exists():
        raise FileNotFoundError(f"pretrained weights {str(pretrained)!r} do not exist")
    meta = read_metadata(path) if path.is_file() else None
    if meta is not None and meta.get("variant") and meta["variant"] != model_name:
        raise ValueError(
            f"pretrained weights {str(pretrained)!r} are for {meta['variant']!r}, not for model {model_name!r}; "
            f"pass --model {meta['variant']} or weights of {model_name}"
        )
    # the loader raises a ValueError naming mis-fitting keys; v1 position embeddings follow img_size
    return create_model(model_name, num_classes=num_classes, pretrained=pretrained, drop_path_rate=drop_path,
                        drop_rate=drop, img_size=img_size)


class EvalLooks:
    """What an evaluation pass shows besides its scores: the ``(K, K)`` confusion counts (rows: true class)
    and the ``keep`` images with the highest loss (the worst classified), as
    ``(loss, image (C, H, W) on the CPU, true index, predicted index, predicted probability)``."""

    def __init__(self, num_classes: int, keep: int = 16):
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.keep = keep
        self.worst: list[tuple[float, Tensor, int, int, float]] = []

    def add(self, logits: Tensor, targets: Tensor, losses: Tensor, images: Tensor) -> None:
        k = self.counts.shape[0]
        pred = logits.argmax(1)
        self.counts += torch.bincount((targets * k + pred).cpu(), minlength=k * k).reshape(k, k)
        floor = self.worst[-1][0] if len(self.worst) >= self.keep else -math.inf
        losses = losses.detach().cpu()
        top = losses.topk(min(self.keep, len(losses))).indices.tolist()
        prob = logits.softmax(1).max(1).values.cpu()
        for i in top:
            if float(losses[i]) > floor:
                self.worst.append((float(losses[i]), images[i].detach().float().cpu(), int(targets[i]), int(pred[i]),
                                   float(prob[i])))
        self.worst = sorted(self.worst, key=lambda w: -w[0])[: self.keep]


class ClassificationTask(Task):
    """Image classification; best checkpoint by validation top-1."""

    name = "classification"
    best_metric = "top1"
    config_class = ClassificationConfig
    presets = PRESETS
    eval_batch_size: ClassVar[int] = 64
    distributed_eval: ClassVar[bool] = True
    draws_by_default: ClassVar[bool] = False
    """``pvt predict`` writes top-k pictures only when given ``--out-dir`` (text is the answer here)."""
    collate_fn = staticmethod(collate_skipping)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.class_names: list[str] = []
        self.data_root: Path | None = None
        self._mixup = None
        self._criterion: nn.Module | None = None
        self._eval_input: dict[str, Any] = {}  # a checkpoint's recorded evaluation input (restore_extra)
        self._device_aug = None  # DeviceAugment when cfg.device_augment
        self._looks: EvalLooks | None = None  # the last evaluation's confusion counts and worst images

    @classmethod
    def preset_name(cls, user: dict[str, Any]) -> str:
        return "digits" if user.get("data") is None else "imagenet"

    def validate(self) -> None:
        get_variant(self.cfg.model)  # ValueError naming close names
        if self.tcfg.task_options:
            raise ValueError(
                f"classification takes no task options, got {', '.join(map(repr, self.tcfg.task_options))}"
            )

    def default_clip_grad(self) -> float | None:
        return get_variant(self.cfg.model).clip_grad  # the official ImageNet config's

    def repeated_aug(self, world_size: int) -> bool:
        """The ``repeated_aug`` setting, else on exactly under more than one process (:func:`use_repeated_aug`)."""
        return use_repeated_aug(self.tcfg.repeated_aug, world_size)

    def auto_micro_batch(self, model: nn.Module, device: torch.device) -> int:
        """On CPU, as few even pieces as keep a piece's stage-1 hidden activation under the allocator's
        largest kept block (so a step touches no new memory pages); whole batches on GPUs."""
        from ..accel.cpu import piece_size
        from ..accel.runtime import MMAP_THRESHOLD
        from ..models.model import PyramidVisionTransformer

        if device.type != "cpu" or not isinstance(model, PyramidVisionTransformer):
            return 0
        size = self.tcfg.img_size
        return piece_size(model, self.cfg.batch_size, size, size, MMAP_THRESHOLD) or 0

    # -- data ---------------------------------------------------------------------------------
    def resolve_root(self) -> Path:
        if self.cfg.data is None:
            return digits_folder(self.cfg.data_dir)
        root = Path(self.cfg.data).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise ValueError(f"data {str(root)!r} is not a folder; expected a folder with train/ and val/")
        if is_shard_folder(root):
            return root
        missing = [s for s in ("train", "val") if not (root / s).is_dir()]
        if missing:
            raise ValueError(
                f"data folder {str(root)!r} has no {' or '.join(s + '/' for s in missing)}; expected train/ and "
                "val/, each with one folder of images per class (or a shard folder written by pvt make-shards)"
            )
        return root

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """The training and validation splits of an ImageFolder tree or of a shard folder (detected by its
        ``index.json``). With ``device_augment`` the training split yields encoded images, which
        :meth:`train_step` decodes and augments on the device."""
        cfg = self.tcfg
        self.data_root = root = self.resolve_root()
        raw = cfg.device_augment
        if raw:
            from ..data.device import DeviceAugment

            self._device_aug = DeviceAugment.from_config(cfg)
        train_tf = None if raw else train_transform(cfg)
        val_tf = eval_transform(cfg.img_size, cfg.crop_pct, cfg.interpolation)
        train: ImageFolderDataset | ShardDataset
        if is_shard_folder(root):
            train = ShardDataset(root, "train", train_tf, raw=raw)
            val = ShardDataset(root, "val", val_tf, class_names=train.class_names)
        else:
            train = ImageFolderDataset(root / "train", train_tf, raw=raw)
            val = ImageFolderDataset(root / "val", val_tf, class_names=train.class_names, require_all=False)
        self.class_names = train.class_names
        if len(self.class_names) < 2:
            raise ValueError(f"data folder {str(root / 'train')!r} has {len(self.class_names)} class; need >= 2")
        log.info("data %s: %d classes, %d train / %d val images", root, len(self.class_names), len(train), len(val))
        return train, val

    # -- model --------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        cfg, tcfg = self.cfg, self.tcfg
        drop_path = tcfg.drop_path if tcfg.drop_path is not None else get_variant(cfg.model).drop_path_rate
        model = build_classifier(cfg.model, len(self.class_names), img_size=tcfg.img_size, drop_path=drop_path,
                                 drop=tcfg.drop, pretrained=cfg.pretrained)
        self._build_losses()
        return apply_backbone_options(model, tcfg)

    def _build_losses(self) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        cfg = self.tcfg
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self._mixup = Mixup(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                num_classes=len(self.class_names),
            )
            self._criterion = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self._criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self._criterion = nn.CrossEntropyLoss()

    # -- steps --------------------------------------------------------------------------------
    def _to(self, images: Tensor, device: torch.device) -> Tensor:
        images = images.to(device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        """The batch's loss; the images it holds that the loader could not read, and those the device
        could not decode, are counted as skipped. Mixup pairs images: an odd batch loses its last."""
        images, targets, skipped = batch
        if isinstance(images, list):  # encoded images (device_augment): decode and augment on the device
            images, keep = self._device_aug(images, device)
            skipped += len(targets) - len(keep)
            targets = targets[keep]
        if self._mixup is not None and len(targets) % 2:
            images, targets = images[:-1], targets[:-1]
        if len(targets) == 0:
            return StepResult(None, 0, skipped)
        images, targets = self._to(images, device), targets.to(device, non_blocking=True)
        if self._mixup is not None:
            images, targets = self._mixup(images, targets)
        logits = model(images)
        return StepResult(self._criterion(logits.float(), targets), len(targets), skipped)

    def split_batch(self, batch: Any, size: int) -> list[tuple[Any, float]] | None:
        images, targets, skipped = batch
        n = len(targets)
        size += size % 2 if self._mixup is not None else 0  # mixup pairs images within a micro-batch
        if n <= size:
            return None
        return [((images[i : i + size], targets[i : i + size], skipped if i == 0 else 0), min(size, n - i) / n)
                for i in range(0, n, size)]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return self.merge_parts([self.evaluate_part(model, loader, device)])

    @torch.no_grad()
    def evaluate_part(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Counts and sums over the images of ``loader``: ``images``, ``top1`` / ``top5`` (correct, integers),
        ``loss_sum`` (float64) and the unreadable images left out, which add up exactly over any split of the
        data."""
        n = top1 = top5 = left_out = 0
        loss_sum = 0.0
        self._looks = looks = EvalLooks(len(self.class_names))
        for images, targets, skipped in loader:
            left_out += skipped
            if len(targets) == 0:
                continue
            images, targets = self._to(images, device), targets.to(device)
            logits = model(images).float()
            losses = F.cross_entropy(logits, targets, reduction="none")
            loss_sum += float(losses.double().sum())
            looks.add(logits, targets, losses, images)
            c1, c5 = topk_correct(logits, targets, (1, 5))
            top1, top5, n = top1 + c1, top5 + c5, n + len(targets)
        return {"images": n, "top1": top1, "top5": top5, "loss_sum": loss_sum, SKIPPED: left_out}

    def merge_parts(self, parts: list[dict[str, float]]) -> dict[str, float]:
        """Top-1 / top-5 (percent) and mean loss over every part's images; the images left out, when any."""
        n = sum(int(p["images"]) for p in parts)
        left_out = sum(int(p.get(SKIPPED, 0)) for p in parts)
        if n == 0:
            raise ValueError("no readable validation images")
        top1, top5 = sum(int(p["top1"]) for p in parts), sum(int(p["top5"]) for p in parts)
        loss_sum = math.fsum(float(p["loss_sum"]) for p in parts)
        return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": float(n),
                **({SKIPPED: float(left_out)} if left_out else {})}

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "class_names": self.class_names,
            "img_size": self.tcfg.img_size,
            "crop_pct": self.tcfg.crop_pct,
            "interpolation": self.tcfg.interpolation,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }

    def restore_extra(self, extra: dict[str, Any]) -> None:
        """The class names and evaluation input a checkpoint records (their types and ranges were checked
        when the file was read: :func:`pvt.weights.checkpoint.check_metadata`); a ValueError without class names."""
        names = extra.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError("its class_names are not a list of names")
        self.class_names = list(names)
        self._eval_input = {k: extra[k] for k in ("img_size", "crop_pct", "interpolation", "mean", "std") if k in extra}

    # -- trained models -----------------------------------------------------------------------
    def load_model(self, state: dict[str, Tensor], meta: dict[str, Any], source: str | Path) -> nn.Module:
        """The network the checkpoint's own config describes (exact even when it was fine-tuned from weights
        whose numerics differ from the variant's, e.g. HF's LayerNorm eps), with a head for its class names (plain: :func:`~pvt.tasks.load_trained` accelerates it)."""
        head = state.get("head.weight")
        if head is None or head.ndim != 2 or head.shape[0] != len(self.class_names):
            raise ValueError(f"checkpoint {str(source)!r} names {len(self.class_names)} classes but its head has "
                             f"{'no' if head is None else int(head.shape[0])} outputs")
        return build_pvt(meta, state, source)

    def input_transform(self):
        """The image -> tensor transform of this model's evaluation input (the checkpoint's size, crop,
        interpolation and normalisation); int8 calibration images go through it too."""
        return self._eval_tf()

    def _eval_tf(self):
        e = {"img_size": self.tcfg.img_size, "crop_pct": self.tcfg.crop_pct, "interpolation": self.tcfg.interpolation,
             **self._eval_input}
        return eval_transform(int(e["img_size"]), float(e["crop_pct"]), str(e["interpolation"]),
                              tuple(e.get("mean", IMAGENET_MEAN)), tuple(e.get("std", IMAGENET_STD)))

    def eval_dataset(self, split: str = "val") -> Dataset:
        """``<data>/<split>/<class>/`` images, or ``<data>/<class>/`` when ``data`` has no split folders at all
        and ``split`` is the default, or the split of a shard folder (default data: the checkpoint's own);
        classes must be among the trained ones. A ``split`` that is not there is a ValueError naming the
        splits that are."""
        root = digits_folder(self.cfg.data_dir) if self.cfg.data is None else Path(self.cfg.data).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise ValueError(f"data {str(root)!r} is not a folder; expected a folder with {split}/ or class folders")
        if is_shard_folder(root):
            return ShardDataset(root, split, self._eval_tf(), class_names=self.class_names)
        splits = sorted(s for s in ("train", "val", "test") if (root / s).is_dir())
        if (root / split).is_dir():
            folder = root / split
        elif split == "val" and not splits:
            folder = root  # a folder of class folders
        else:
            raise ValueError(f"split {split!r}: {str(root / split)!r} does not exist; "
                             + (f"splits found: {', '.join(splits)}" if splits else
                                "the folder holds class folders only: leave --split out"))
        return ImageFolderDataset(folder, self._eval_tf(), class_names=self.class_names, require_all=False)

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Sequence[str | Path], device: torch.device, *, topk: int = 5,
                score_thresh: float = 0.3, out_dir: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """The ``topk`` classes of each image: ``{"image", "top": [{"class", "index", "prob"}, ...]}``, in
        batches of :attr:`eval_batch_size`; ``{"image", "error"}`` for an image that cannot be read. With
        ``out_dir`` also the image with its top-k bars (``<stem>_pred.png``, named in ``"output"``)."""
        if topk < 1:
            raise ValueError(f"topk={topk!r}: expected an integer >= 1")
        tf = self._eval_tf()
        names = drawing_names(images) if out_dir is not None else None

        def load(p: str | Path) -> tuple[Any, Tensor]:
            img = load_rgb(p)
            return (img if out_dir is not None else None), tf(img)

        out: list[dict[str, Any]] = []
        batch: list[tuple[int, str | Path, Any, str | None]] = []
        for i, (p, item, why) in enumerate(readable_images(images, load), start=1):
            batch.append((i - 1, p, item, why))
            if len(batch) == self.eval_batch_size or i == len(images):
                good = [x[1] for _, _, x, _ in batch if x is not None]
                tops = iter(self._top(model(torch.stack(good).to(device)), topk) if good else [])
                for j, p, x, why in batch:
                    if x is None:
                        out.append({"image": str(p), "error": why})
                        continue
                    rec = {"image": str(p), "top": next(tops)}
                    if names is not None:
                        rec["output"] = save_drawing(draw_topk(x[0], rec["top"]), out_dir, names[j])
                    out.append(rec)
                batch = []
            if progress is not None:
                progress(i, len(images))
        return out

    def _top(self, logits: Tensor, topk: int) -> list[list[dict[str, Any]]]:
        """The ``topk`` classes of each row of ``logits``."""
        probs = logits.float().softmax(-1).cpu()
        k = min(topk, probs.shape[1])
        out = []
        for row in probs:
            val, idx = row.topk(k)
            out.append([{"class": self.class_names[i], "index": int(i), "prob": float(v)}
                        for v, i in zip(val.tolist(), idx.tolist())])
        return out

    def evaluation_pictures(self, out_dir: str | Path, prefix: str = "eval") -> dict[str, str]:
        """The last evaluation's pictures: ``<prefix>_confusion.png`` (true class x predicted class counts) and
        ``<prefix>_worst.png`` (the images with the highest loss, with their true and predicted classes).
        Returns ``{"confusion": path, "worst": path}``; nothing before an evaluation."""
        looks = self._looks
        if looks is None or int(looks.counts.sum()) == 0:
            return {}
        names = self.class_names
        tiles = [as_viewable(img) for _, img, _, _, _ in looks.worst]
        captions = [f"{names[t][:9]}->{names[p][:9]} {100 * q:.0f}%" for _, _, t, p, q in looks.worst]
        return {
            "confusion": save_drawing(draw_confusion(looks.counts.numpy(), names), out_dir, f"{prefix}_confusion.png"),
            "worst": save_drawing(draw_image_grid(tiles, captions), out_dir, f"{prefix}_worst.png"),
        }

    @classmethod
    def summary(cls, metrics: dict[str, Any]) -> str:
        return f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}"

