"""Drawings of predictions over their image: boxes with labels, instance masks, class maps, top-k bars,
attention heat maps; and the pictures of a classifier's evaluation (confusion matrix, worst images)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "draw_detections", "draw_segmentation", "draw_topk", "heat_overlay", "as_viewable",
           "draw_confusion", "draw_image_grid", "drawing_names", "save_drawing"]


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
    from ..base.io import atomic_write

    target = Path(out_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as f:
        drawing.save(f, format="PNG")
    return str(target)


def draw_topk(image, top: Sequence[dict], width: int = 320) -> Image.Image:
    """``image`` scaled to ``width`` pixels wide above one bar per ``{"class", "prob"}`` of ``top``."""
    img = _as_pil(image)
    scale = width / img.size[0]
    img = img.resize((width, max(1, round(img.size[1] * scale))), Image.Resampling.NEAREST if scale > 2 else
                     Image.Resampling.BILINEAR)
    row = 16
    out = Image.new("RGB", (width, img.size[1] + row * len(top) + 6), (255, 255, 255))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    y = img.size[1] + 4
    for t in top:
        p = float(t["prob"])
        draw.rectangle([0, y + 1, round((width - 1) * p), y + row - 2], fill=(90, 140, 230))
        draw.text((3, y + 2), f"{t['class']}  {100 * p:.1f}%", fill=(0, 0, 0), font=font)
        y += row
    return out


def as_viewable(x) -> Image.Image:
    """A model's normalised ``(3, H, W)`` input as a picture: each channel stretched to [0, 255] (the
    framing, crop and resolution the model saw, without knowing its normalisation)."""
    a = np.asarray(x.detach().float().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    lo = a.reshape(a.shape[0], -1).min(1)[:, None, None]
    hi = a.reshape(a.shape[0], -1).max(1)[:, None, None]
    a = (a - lo) / np.maximum(hi - lo, 1e-12)
    return Image.fromarray((a.transpose(1, 2, 0) * 255).round().astype(np.uint8))


def _heat_colours(v: np.ndarray) -> np.ndarray:
    """``v`` in [0, 1] -> RGB float (black, purple, orange, yellow: the 'inferno' look)."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
    pos = np.clip(v, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return stops[i] * (1 - f) + stops[i + 1] * f


def heat_overlay(image, heat, alpha: float = 0.6, mark: tuple[float, float] | None = None) -> Image.Image:
    """``heat (h, w)`` (any scale; shown relative to its maximum) stretched over ``image`` with nearest
    neighbours (one heat cell stays one block) and blended in; ``mark``: a ``(y, x)`` fraction of the image
    to circle (the query)."""
    img = _as_pil(image)
    hm = np.asarray(heat.detach().float().cpu() if hasattr(heat, "detach") else heat, dtype=np.float32)
    hm = hm / max(float(hm.max()), 1e-12)
    big = np.asarray(Image.fromarray((hm * 255).astype(np.uint8)).resize(img.size, Image.Resampling.NEAREST),
                     np.float32) / 255
    arr = (1 - alpha) * np.asarray(img, np.float32) + alpha * _heat_colours(big)
    out = Image.fromarray(arr.round().astype(np.uint8))
    if mark is not None:
        draw = ImageDraw.Draw(out)
        cy, cx = mark[0] * img.size[1], mark[1] * img.size[0]
        r = max(3, min(img.size) // 20)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(0, 255, 255), width=max(1, r // 3))
    return out


def draw_confusion(counts: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """A confusion matrix (rows: true class, columns: predicted) with its counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    k = len(class_names)
    side = min(14, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=90 if k > 6 else 0)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{int(counts.sum())} images, {int(np.trace(counts))} right")
    if k <= 30:
        top = counts.max() or 1
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if counts[i, j] > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def draw_image_grid(tiles: Sequence[Image.Image], captions: Sequence[str], tile: int = 128,
                    columns: int = 4) -> Image.Image:
    """``tiles`` scaled to ``tile`` pixels wide, ``columns`` per row, each above its caption line."""
    font = ImageFont.load_default()
    cap = 14
    rows = max(1, -(-len(tiles) // columns))
    out = Image.new("RGB", (columns * tile, rows * (tile + cap)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for n, (t, c) in enumerate(zip(tiles, captions)):
        x, y = (n % columns) * tile, (n // columns) * (tile + cap)
        out.paste(_as_pil(t).resize((tile, tile), Image.Resampling.BILINEAR), (x, y))
        draw.text((x + 2, y + tile + 1), c, fill=(0, 0, 0), font=font)
    return out
