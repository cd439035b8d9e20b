"""Attention pictures of a trained model of any task, for an image file: the input exactly as the model's
PVT received it (captured during the task's own prediction), each stage's attention over its reduced key
map and the rollout, drawn over that input (see :mod:`pvt.models.attention` and docs/attention.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from ..models.attention import AttentionMaps, attention_maps, find_pvt
from .visualize import as_viewable, heat_overlay

__all__ = ["AttentionPictures", "backbone_input", "attention_pictures", "parse_query"]


def parse_query(text: str | None) -> tuple[float, float] | None:
    """``"Y,X"`` fractions of the image (``"0.5,0.5"``: the centre) -> ``(y, x)``; None or ``""`` -> None."""
    if not text:
        return None
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"attention query {text!r}: expected Y,X as fractions of the image, e.g. 0.5,0.5") from None
    if not (0 <= y <= 1 and 0 <= x <= 1):
        raise ValueError(f"attention query {text!r}: Y and X must be in [0, 1]")
    return y, x


def backbone_input(task: Any, model: nn.Module, image: str | Path, device: torch.device) -> Tensor:
    """What the PVT inside ``model`` receives for ``image`` when ``task`` predicts it: ``(3, H, W)``
    (resized, cropped, padded and normalised as that task does it)."""
    seen: list[Tensor] = []
    # the first stage, not the PVT's forward: detectors call its stages through their own feature methods
    first = find_pvt(model).stages[0]
    handle = first.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].detach()))
    try:
        task.predict(model, [image], device)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"the {task.name} model did not run its PVT on {str(image)!r}")
    return seen[0]


@dataclass
class AttentionPictures:
    maps: AttentionMaps
    input: Image.Image
    """The PVT's input as a picture (:func:`pvt.tasks.visualize.as_viewable`)."""
    stages: list[Image.Image]
    """Per stage: the chosen block's attention (head mean or one head) over its key map, over the input."""
    rollout: Image.Image
    titles: list[str]
    """Per stage: what its picture shows (key grid, head)."""

    def panel(self, size: int = 192, columns: int | None = None) -> Image.Image:
        """Input, every stage and the rollout, ``columns`` per row (default: all in one row), each ``size``
        pixels high under its title."""
        tiles = [("input", self.input), *zip(self.titles, self.stages), ("rollout", self.rollout)]
        cols = columns or len(tiles)
        rows = -(-len(tiles) // cols)
        font = ImageFont.load_default()
        w = max(1, round(size * self.input.size[0] / self.input.size[1]))
        out = Image.new("RGB", (cols * (w + 4), rows * (size + 16)), (255, 255, 255))
        draw = ImageDraw.Draw(out)
        for i, (title, im) in enumerate(tiles):
            x, y = (i % cols) * (w + 4), (i // cols) * (size + 16)
            out.paste(im.resize((w, size), Image.Resampling.NEAREST), (x, y + 16))
            draw.text((x + 2, y + 2), title, fill=(0, 0, 0), font=font)
        return out


def attention_pictures(model: nn.Module, x: Tensor, *, block: int = -1, head: int | None = None,
                       query: tuple[float, float] | None = None) -> AttentionPictures:
    """The attention pictures of ``model``'s PVT on its input ``x (3, H, W)``: per stage, block ``block``'s
    attention of the query under ``query`` (None: the mean over every query), head ``head`` (None: the
    head mean), over the key map laid on the image; and the rollout (from ``query``'s last-stage token, or
    the pooled output)."""
    maps = attention_maps(model, x)
    view = as_viewable(x)
    stages, titles = [], []
    for s, blocks in enumerate(maps.weights):
        b = block if block < 0 else min(block, len(blocks) - 1)  # the stages have different depths
        heads = blocks[0].shape[1]
        h = head if head is not None and head < heads else None  # and different head counts
        stages.append(heat_overlay(view, maps.on_query_map(s, b, h, query)[0], mark=query))
        kh, kw = maps.key_grid[s]
        titles.append(f"stage {s + 1} keys {kh}x{kw} " + (f"head {h}" if h is not None else f"{heads}h mean"))
    return AttentionPictures(maps, view, stages, heat_overlay(view, maps.rollout(query)[0], mark=query), titles)
