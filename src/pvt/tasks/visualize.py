"""Drawings of dense predictions over their image: boxes with labels, instance masks, class maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "draw_detections", "draw_segmentation", "drawing_names", "save_drawing"]


def palette(n: int, seed: int = 3) -> np.ndarray:
    """``(n, 3)`` uint8 distinct, saturated colours (deterministic)."""
    import colorsys

    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], dtype=np.uint8)


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def draw_detections(
    image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    masks: np.ndarray | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """``image`` (PIL, HWC uint8 or CHW float) with boxes, ``name score`` tags and optional masks
    ``(N, H, W)`` bool blended in each class's colour."""
    img = _as_pil(image)
    colours = palette(max(len(class_names), 1))
    if masks is not None and len(masks):
        arr = np.asarray(img).astype(np.float32)
        for m, lab in zip(masks, labels):
            m = np.asarray(m, bool)
            arr[m] = (1 - alpha) * arr[m] + alpha * colours[lab % len(colours)]
        img = Image.fromarray(arr.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    width = max(1, round(min(img.size) / 160))
    for box, lab, score in zip(boxes, labels, scores):
        c = tuple(int(v) for v in colours[lab % len(colours)])
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=c, width=width)
        name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
        text = f"{name} {score:.2f}"
        tb = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (tb[3] - tb[1]) - 2 if y1 - (tb[3] - tb[1]) - 2 >= 0 else y1
        tb = draw.textbbox((x1, ty), text, font=font)
        draw.rectangle([tb[0] - 1, tb[1] - 1, tb[2] + 1, tb[3] + 1], fill=c)
        draw.text((x1, ty), text, fill=(0, 0, 0), font=font)
    return img


def draw_segmentation(image, seg: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
                      ignore_index: int = 255, legend: bool = True) -> Image.Image:
    """``image`` blended with the colour of each pixel's class in ``seg (H, W)``; a legend of the
    classes present is drawn in the top-left corner."""
    img = _as_pil(image)
    seg = np.asarray(seg)
    if seg.shape != (img.size[1], img.size[0]):
        raise ValueError(f"segmentation map shape {seg.shape} differs from the image's {(img.size[1], img.size[0])}")
    colours = palette(max(len(class_names), 1))
    arr = np.asarray(img).astype(np.float32)
    valid = seg != ignore_index
    cmap = colours[np.clip(seg, 0, len(colours) - 1)]
    arr[valid] = (1 - alpha) * arr[valid] + alpha * cmap[valid]
    out = Image.fromarray(arr.round().astype(np.uint8))
    if legend:
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default()
        y = 2
        for k in np.unique(seg[valid]):
            name = class_names[k] if k < len(class_names) else str(k)
            tb = draw.textbbox((14, y), name, font=font)
            draw.rectangle([2, y + 1, 11, y + 10], fill=tuple(int(v) for v in colours[k]), outline=(0, 0, 0))
            draw.rectangle([tb[0] - 1, tb[1] - 1, tb[2] + 1, tb[3] + 1], fill=(255, 255, 255))
            draw.text((14, y), name, fill=(0, 0, 0), font=font)
            y += 13
    return out


def _folders(p: Path) -> tuple[str, ...]:
    return tuple(x for x in p.parent.parts if x not in (p.anchor, "..", "."))


def _tail(p: Path, depth: int) -> str:
    """``p``'s stem after its last ``depth`` folder names, joined by ``_``."""
    folders = _folders(p)
    return "_".join([*folders[len(folders) - depth:], p.stem] if depth else [p.stem])


def drawing_names(images: Sequence[str | Path]) -> list[str]:
    """The file name of each image's drawing: ``<stem>_pred.png``; images that share a stem (``a/x.png``,
    ``b/x.png``) get as many of their folder names as tell them apart (``a_x_pred.png``, ``b_x_pred.png``),
    and a path given twice a number (``x_2_pred.png``), so no drawing overwrites another."""
    paths = [Path(p) for p in images]
    stems = []
    for i, p in enumerate(paths):
        same = [q for j, q in enumerate(paths) if j != i and q.stem == p.stem]
        depth = 0
        while same and depth < len(_folders(p)) and any(_tail(q, depth) == _tail(p, depth) for q in same):
            depth += 1
        stems.append(_tail(p, depth))
    seen: dict[str, int] = {}
    out = []
    for n in stems:
        seen[n] = seen.get(n, 0) + 1
        out.append(f"{n}_pred.png" if seen[n] == 1 else f"{n}_{seen[n]}_pred.png")
    return out


def save_drawing(drawing: Image.Image, out_dir: str | Path, name: str) -> str:
    """Write ``drawing`` atomically as ``<out_dir>/<name>`` (see :func:`drawing_names`); returns the path."""
    from ..io import atomic_write

    target = Path(out_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as f:
        drawing.save(f, format="PNG")
    return str(target)
