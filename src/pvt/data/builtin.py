"""Built-in real data: scikit-learn's handwritten digits (1,797 8x8 scans, 10 classes, shipped inside
the scikit-learn package), upsampled and written once as an ImageFolder tree.

Layout: ``<cache>/digits-<size>/{train,val}/<0..9>/<index>.png`` with a fixed stratified split
(20 % held out, seed 0): 1,437 training and 360 validation images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..base.io import cache_root

__all__ = ["digits_folder", "default_cache_dir", "DIGITS_CLASSES"]

DIGITS_CLASSES = [str(i) for i in range(10)]
_VERSION = 1


def default_cache_dir() -> Path:
    """``$PVT_CACHE`` or ``~/.cache/pvt`` (:func:`pvt.base.io.cache_root`)."""
    return cache_root()


def digits_folder(cache_dir: str | Path | None = None, size: int = 32) -> Path:
    """The digits as ``train/`` and ``val/`` folders of ``size``x``size`` grayscale PNGs; written on
    first use (atomically: a concurrent or killed writer never leaves a partial tree)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"digits-{size}"
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    try:
        for split, ids in (("train", train_idx), ("val", val_idx)):
            for c in DIGITS_CLASSES:
                (tmp / split / c).mkdir(parents=True)
            for i in sorted(ids.tolist()):
                img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC)
                img.save(tmp / split / str(digits.target[i]) / f"{i:04d}.png")
        (tmp / ".complete").write_text(f"sklearn digits v{_VERSION}\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
