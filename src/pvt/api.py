"""The Python API of training and using models, for every task: :func:`train`, :func:`evaluate`,
:func:`predict`.

The ``pvt train / eval / predict / demo`` commands only wrap these::

    import pvt
    run = pvt.train(epochs=10)                        # built-in digits, PVTv2-B0; returns a TrainResult
    pvt.evaluate(run.best_checkpoint)                 # {"top1": ..., "top5": ..., "loss": ..., ...}
    pvt.predict(run.best_checkpoint, ["a.png"], topk=3)
    pvt.train(task="detection", model="pvt_v2_b0")    # RetinaNet on the built-in shapes; same eval / predict
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["train", "evaluate", "predict", "load_predictor", "Predictor", "quantize"]

log = logging.getLogger("pvt")


def train(config: Any = None, *, resume: str | Path | None = None, quiet: bool = False,
          fresh_optimizer: bool = False, **overrides: Any):
    """Train a model; returns a :class:`pvt.engine.trainer.TrainResult` (run folder, metrics, best epoch).

    Args:
        config: a :class:`~pvt.engine.config.TrainConfig`, a flat mapping of its keys and its task's, or a YAML
            file path (the task's preset fills what it leaves out: :func:`pvt.tasks.resolve_config`).
        resume: a run folder to continue (its ``config.yaml`` is used; ``overrides`` may extend ``epochs`` and
            change the values in :data:`pvt.engine.resume.RESUME_MAY_CHANGE`; any other change is refused).
        quiet: no progress bar or per-epoch lines on stdout (``train.log`` still gets them).
        fresh_optimizer: with ``resume``, when the run's ``state.pt`` is unreadable: continue from the weights
            of its ``last.safetensors`` with a fresh optimiser state.
        **overrides: config keys (the engine's or the task's), e.g. ``epochs=5, data="my_images/", mixup=0``.
    """
    from .engine.config import TrainConfig
    from .engine.trainer import Trainer
    from .tasks import create_task, read_config, resolve_config

    if resume is not None:
        cfg = Trainer.resume_config(resume, overrides, read=lambda data: read_config(data, recorded=True))
    elif isinstance(config, TrainConfig):
        cfg = resolve_config(**{**config.to_dict(), **overrides})
    elif isinstance(config, dict):
        cfg = resolve_config(**{**config, **overrides})
    else:
        cfg = resolve_config(config, **overrides)
    return Trainer(cfg, create_task(cfg), resume=resume, quiet=quiet, fresh_optimizer=fresh_optimizer).fit()


def evaluate(checkpoint: str | Path, data: str | Path | None = None, *, split: str = "val",
             batch_size: int | None = None, device: str = "auto", workers: int = 0,
             model: str | None = None, precision: str = "float32",
             calibration: str | Path | None = None, out_dir: str | Path | None = None,
             pictures: bool = True) -> dict[str, Any]:
    """Score a model trained by ``pvt train`` (any task) on ``data``.

    ``checkpoint``: a ``.safetensors`` it wrote, or its run folder (best, else last). ``data``: default, the
    data it was trained on (its held-out split); classification also takes a folder of ``<split>/<class>/``
    or ``<class>/`` images. ``precision``: float32, bfloat16, int8 or auto (bfloat16 where the CPU has it);
    ``calibration``: a folder of images for static int8 ranges (default: dynamic). Returns the task's scores
    (classification: ``top1``, ``top5``, ``loss``; detection: ``bbox_mAP`` ...; segmentation: ``mIoU`` ...,
    ``per_class_iou``) plus ``task``, ``model``, ``checkpoint``, ``data``, ``images``, ``skipped_images``,
    ``precision`` and ``precision_reason``. ``pictures``: tasks that draw their evaluation (classification:
    a confusion matrix and the worst-classified images) write ``eval_<split>_*.png`` into ``out_dir``, by
    default the checkpoint's run folder (skipped when that folder cannot be written), named in ``"pictures"``.
    """
    from torch.utils.data import DataLoader

    from .engine.task import SKIPPED
    from .tasks import load_trained

    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
    trained = load_trained(checkpoint, device=device, data=None if data is None else str(data), model=model,
                           precision=precision, calibration=calibration)
    task = trained.task
    ds = task.eval_dataset(split)
    loader = DataLoader(ds, batch_size=batch_size or task.eval_batch_size, shuffle=False, num_workers=workers,
                        collate_fn=task.collate_fn)
    with trained.autocast():
        metrics: dict[str, Any] = dict(task.evaluate(trained.model, loader, trained.device))
    # unreadable: files found when the data set was listed, and those evaluation left out
    skipped = len(getattr(ds, "unreadable", ())) + metrics.pop(SKIPPED, 0.0)
    metrics.update(task.evaluation_details())
    draw = getattr(task, "evaluation_pictures", None)
    if pictures and draw is not None:
        folder = Path(out_dir) if out_dir is not None else (trained.path.parent)
        try:
            metrics["pictures"] = draw(folder, f"eval_{split}")
        except OSError:
            if out_dir is not None:
                raise
            metrics["pictures"] = {}  # a read-only folder beside a downloaded checkpoint: scores only
    return {
        **metrics,
        "images": int(metrics.get("images", len(ds))),
        "skipped_images": int(skipped),
        "task": task.name,
        "model": trained.name,
        "checkpoint": str(checkpoint),
        "data": str(getattr(ds, "root", None) or task.cfg.data or "built-in"),
        "img_size": task.tcfg.img_size,
        "precision": trained.precision,
        "precision_reason": trained.precision_reason,
    }


def predict(checkpoint: str | Path, images: Sequence[str | Path] | str | Path, *, topk: int = 5,
            score_thresh: float = 0.3, out_dir: str | Path | None = None, device: str = "auto",
            precision: str = "float32", calibration: str | Path | None = None, attention: bool = False,
            attention_block: int = -1, attention_head: int | None = None,
            attention_query: tuple[float, float] | None = None,
            default_out_dir: str | Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Predict each image with a model trained by ``pvt train`` (any task): one JSON-able record per image.

    ``images``: image files and folders (a folder stands for the images under it, recursively, sorted).
    They are read in batches; one that cannot be read is logged with its reason and left out (the others
    are predicted; a ValueError only when none can be). ``progress(done, total)`` is called as images are
    done.

    Classification: the ``topk`` classes with probabilities (``"top"``). Detection / instance: the
    detections scoring at least ``score_thresh`` (``"detections"``). Segmentation: the share of pixels per
    class (``"class_fractions"``). With ``out_dir``, each prediction is drawn there (``<stem>_pred.png``:
    the image with its top-k bars, boxes / masks, or class map; folder names added where two images share a
    stem; named in ``"output"``); ``default_out_dir`` is used instead of a missing ``out_dir`` by the tasks
    that draw by default (the dense ones). ``attention``: also ``<stem>_attention.png`` there (``"attention"``):
    each stage's attention (block ``attention_block``, head ``attention_head`` or the head mean, the query
    under ``attention_query`` = ``(y, x)`` fractions or the mean of every query) and the rollout
    (:mod:`pvt.tasks.explain`). ``precision`` and ``calibration``: as for :func:`evaluate`.
    """
    images = _image_list(images)  # before the (slower) loading
    return load_predictor(checkpoint, device=device, precision=precision, calibration=calibration).predict(
        images, topk=topk, score_thresh=score_thresh, out_dir=out_dir, attention=attention,
        attention_block=attention_block, attention_head=attention_head, attention_query=attention_query,
        default_out_dir=default_out_dir, progress=progress)


def _image_list(images: Sequence[str | Path] | str | Path) -> list[str | Path]:
    """Paths of image files and folders -> the list of image files (a folder stands for the images under it,
    recursively, sorted); a ValueError / FileNotFoundError naming what is missing."""
    from .data import image_files

    if isinstance(images, (str, Path)):
        images = [images]
    if not images:
        raise ValueError("no images given; pass one or more image paths or folders")
    files: list[str | Path] = []
    for p in images:
        if Path(p).is_dir():
            files += image_files(p)
        elif Path(p).is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"image {str(p)!r} does not exist (expected an image file or a folder of images)")
    return files


class Predictor:
    """A model trained by ``pvt train``, loaded once to predict many images (:func:`load_predictor`; what
    :func:`predict` and ``pvt app`` use)."""

    def __init__(self, trained: Any):
        self.trained = trained

    @property
    def task(self) -> str:
        return self.trained.task.name

    @property
    def name(self) -> str:
        return self.trained.name

    @property
    def precision(self) -> str:
        """The precision path and why, e.g. ``float32 (default)``, on which device."""
        t = self.trained
        return f"{t.precision} ({t.precision_reason}) on {t.device}"

    def predict(self, images: Sequence[str | Path] | str | Path, *, topk: int = 5, score_thresh: float = 0.3,
                out_dir: str | Path | None = None, attention: bool = False, attention_block: int = -1,
                attention_head: int | None = None, attention_query: tuple[float, float] | None = None,
                default_out_dir: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """As :func:`predict`, with this loaded model: images that cannot be read are logged and left out."""
        images = _image_list(images)
        trained = self.trained
        if out_dir is None and getattr(trained.task, "draws_by_default", True):
            out_dir = default_out_dir
        if attention and out_dir is None:
            out_dir = default_out_dir or "predictions"
        with trained.autocast():
            records = trained.task.predict(trained.model, list(images), trained.device, topk=topk,
                                           score_thresh=score_thresh, out_dir=out_dir, progress=progress)
        errors = [r["error"] for r in records if "error" in r]
        if errors and len(errors) == len(records):
            raise ValueError(errors[0] + (f" (and the other {len(errors) - 1} images cannot be read either)"
                                          if len(errors) > 1 else ""))
        for e in errors:
            log.warning("skipped %s", e)
        if errors:
            log.warning("skipped %d unreadable image(s) of %d", len(errors), len(records))
        if attention:
            from .tasks.visualize import drawing_names, save_drawing

            names = dict(zip(map(str, images), drawing_names(images)))
            for rec in records:
                if "error" in rec:
                    continue
                pics = self.attention(rec["image"], block=attention_block, head=attention_head,
                                      query=attention_query)
                rec["attention"] = save_drawing(pics.panel(), out_dir,
                                                names[rec["image"]].replace("_pred.png", "_attention.png"))
        return [r for r in records if "error" not in r]

    def attention(self, image: str | Path, *, block: int = -1, head: int | None = None,
                  query: tuple[float, float] | None = None):
        """The attention pictures of ``image`` (:class:`pvt.tasks.explain.AttentionPictures`): the input as
        the model's PVT received it, each stage's attention, the rollout."""
        from .tasks.explain import attention_pictures, backbone_input

        t = self.trained
        with t.autocast():
            x = backbone_input(t.task, t.model, image, t.device)
        return attention_pictures(t.model, x, block=block, head=head, query=query)

    def example_images(self, limit: int = 4) -> list[str]:
        """Up to ``limit`` images of the held-out split of the data the model was trained on (the built-in
        digits or shapes when it was), spread over the split; none when that data is not on this machine."""
        from .data import IMG_EXTENSIONS

        try:
            ds = self.trained.task.eval_dataset("val")
        except (ValueError, OSError):
            return []
        if hasattr(ds, "samples"):
            first = [s[0] if isinstance(s, (tuple, list)) else s for s in ds.samples]
            files = [str(f) for f in first if isinstance(f, (str, Path))]
        else:
            folder = Path(getattr(ds, "image_dir", None) or getattr(ds, "root", None) or ".")
            files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        step = max(1, len(files) // max(limit, 1))
        return files[::step][:limit]


def load_predictor(checkpoint: str | Path, *, device: str = "auto", precision: str = "float32",
                   calibration: str | Path | None = None) -> Predictor:
    """Load a model trained by ``pvt train`` (any task) once, for :meth:`Predictor.predict` on many images."""
    from .tasks import load_trained

    return Predictor(load_trained(checkpoint, device=device, precision=precision, calibration=calibration))


def quantize(model: Any, calibration: Any = None, *, images: int = 64, **kwargs: Any) -> Any:
    """int8 CPU inference for a PVT, in place (:func:`pvt.accel.quant.quantize`): ``calibration`` may also
    be a folder of images (searched recursively, up to ``images`` of them, resized and normalised as
    ImageNet evaluation input at the model's ``img_size``) for static activation ranges; None: dynamic."""
    from .accel.quant import quantize as quantize_model

    if isinstance(calibration, (str, Path)):
        calibration = _folder_images(Path(calibration), model.config.img_size, images)
    return quantize_model(model, calibration, **kwargs)


def _folder_images(root: Path, img_size: int, limit: int):
    from .data import eval_transform
    from .tasks import calibration_batch

    return calibration_batch(root, eval_transform(img_size), limit)
