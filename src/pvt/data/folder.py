"""An ImageFolder-style dataset (``root/<class>/<image>``) that never stops an epoch on a bad file.

Grayscale, 16-bit grayscale, palette, CMYK and RGBA images are converted to RGB. Files whose header cannot
be read are dropped when the folder is scanned; files that fail later, whatever they raise (truncated
data, a decompression bomb, an image so elongated that resizing it would need gigabytes), make
``__getitem__`` return ``None``, which :func:`collate_skipping` removes from the batch and counts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMG_EXTENSIONS", "MAX_ASPECT", "ImageFolderDataset", "collate_skipping", "load_rgb", "read_image",
           "find_classes", "image_files", "readable_images"]

log = logging.getLogger("pvt.data")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

MAX_ASPECT = 100
"""The most elongated image accepted (long side / short side): resized to the evaluation size on its short
side, a longer one would need gigabytes (a valid 2,000,000 x 1 PNG is 321 bytes)."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grayscale image as 8-bit ``L``, scaled
    rather than clipped: 16-bit data by 255/65535; ``I`` and ``F`` by the range their values fit (0-1 for
    floats, 0-255, 0-65535, else their maximum)."""
    a = np.asarray(img).astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16"):
        full = 65535.0
    elif img.mode == "F" and top <= 1.0:
        full = 1.0
    else:
        full = next((r for r in (255.0, 65535.0) if top <= r), top)
    return Image.fromarray(np.clip(np.round(a * (255.0 / full)), 0, 255).astype(np.uint8), "L")


def load_rgb(path: str | Path | BinaryIO) -> Image.Image:
    """Open an image file (a path or an open binary file) as 3-channel RGB (alpha dropped, palette and
    grayscale expanded, 16-bit and float grayscale scaled to 8 bits). A ValueError for an image more
    elongated than :data:`MAX_ASPECT`."""
    with Image.open(path) as img:
        w, h = img.size
        if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
            raise ValueError(f"{w}x{h} pixels is more elongated than {MAX_ASPECT}:1 (resizing it would need "
                             "gigabytes)")
        if img.mode in ("P", "PA", "LA"):
            img = img.convert("RGBA")
        elif img.mode.startswith("I") or img.mode == "F":
            img = _to_8bit(img)
        return img.convert("RGB")


def read_image(path: str | Path) -> Tensor:
    """An image file as a ``(3, H, W)`` float tensor in [0, 1] (RGB); FileNotFoundError / ValueError
    naming the file when it is missing or unreadable (whatever the decoder raises: a decompression bomb,
    truncated data, memory)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {str(p)!r} does not exist")
    try:
        img = load_rgb(p)
    except Exception as e:  # noqa: BLE001  (PIL's errors have no common base; MemoryError is one)
        raise ValueError(f"image {str(p)!r} cannot be read: {' '.join(str(e).split()) or type(e).__name__}") from None
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def readable_images(paths: Sequence[str | Path], load: Callable[[str | Path], Any] = read_image,
                    ) -> Iterator[tuple[str | Path, Any, str | None]]:
    """``(path, load(path), None)`` for each path in turn, or ``(path, None, reason)`` for a file ``load``
    cannot read (whatever it raises: truncated data, a decompression bomb, memory), so that one bad file
    never stops the rest; ``reason`` names the file."""
    for p in paths:
        try:
            yield p, load(p), None
        except Exception as e:  # noqa: BLE001  (PIL's errors have no common base; MemoryError is one)
            reason = " ".join(str(e).split()) or type(e).__name__
            yield p, None, reason if "cannot be read" in reason else f"image {str(p)!r} cannot be read: {reason}"


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted; hidden files and folders left out); a
    ValueError naming the accepted extensions when there are none."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if _is_image(p)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ValueError(f"folder {str(root)!r} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return files


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class-folder names of ``split_dir``; ValueError if it has none."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"data folder {str(split_dir)!r} does not exist")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"data folder {str(split_dir)!r} has no class folders; expected one folder of images per class"
        )
    return classes


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/``, labelled by ``class_names`` (default: the sorted folders).

    Args:
        root: one split, e.g. ``data/train``.
        transform: PIL image -> tensor ``(3, H, W)``.
        class_names: the label order (the training split's), so val labels agree with train's.
        require_all: every class folder must hold at least one image (the training split).
        raw: return each file's bytes as a 1-D uint8 tensor instead of a decoded, transformed image
            (for decoding and augmenting on the training device).

    Attributes:
        samples: ``(path, label)`` of every readable file.
        unreadable: paths whose header could not be read (skipped at scan time).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Tensor] | None = None,
        class_names: list[str] | None = None,
        require_all: bool = True,
        raw: bool = False,
    ):
        self.root = Path(root)
        self.raw = raw
        found = find_classes(self.root)
        self.class_names = list(class_names) if class_names is not None else found
        unknown = sorted(set(found) - set(self.class_names))
        if unknown:
            raise ValueError(
                f"class folder(s) {', '.join(repr(str(self.root / u)) for u in unknown)} are not among the "
                f"training classes ({', '.join(self.class_names)})"
            )
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        self.unreadable: list[str] = []
        for label, name in enumerate(self.class_names):
            folder = self.root / name
            files = sorted(p for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else []
            if not files and require_all:
                raise ValueError(
                    f"class folder {str(folder)!r} has no images (accepted extensions: {', '.join(IMG_EXTENSIONS)})"
                )
            for p in files:
                if _header_ok(p):
                    self.samples.append((str(p), label))
                else:
                    self.unreadable.append(str(p))
        if not self.samples:
            raise ValueError(f"data folder {str(self.root)!r} has no readable images")
        if self.unreadable:
            log.warning(
                "skipped %d unreadable image(s) in %s, e.g. %s", len(self.unreadable), self.root, self.unreadable[0]
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        """``(image, label)``, or None when the file cannot be read or transformed, whatever it raises."""
        path, label = self.samples[index]
        if self.raw:
            try:
                return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8), label
            except OSError as e:
                log.warning("skipped unreadable image %s (%s)", path, e)
                return None
        try:
            img = load_rgb(path)
            return (self.transform(img) if self.transform else img), label
        except Exception as e:  # noqa: BLE001  (one file never stops an epoch: MemoryError, OverflowError too)
            log.warning("skipped unreadable image %s (%s: %s)", path, type(e).__name__, e)
            return None


def _header_ok(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018  (header parsed)
        return True
    except Exception:
        return False


def collate_skipping(samples: list[Any]) -> tuple[Tensor | list[Tensor], Tensor, int]:
    """``[(image, label) | None, ...] -> (images (B, 3, H, W), labels (B,), number skipped)``; encoded
    images (1-D uint8 tensors of a ``raw`` data set, of different lengths) stay a list."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    encoded = good[0][0].ndim == 1
    images = [s[0] for s in good] if encoded else torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    return images, labels, skipped
