"""The learning-curve PNG of a run, drawn from its ``metrics.jsonl`` records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write

__all__ = ["plot_curves"]


def plot_curves(records: list[dict[str, Any]], path: str | Path, metric: str, title: str = "") -> None:
    """Losses (train, val) on the left, ``val_<metric>`` (and ``val_top5``) on the right."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        if any(key in r for r in records):
            ax1.plot(epochs, [r.get(key) for r in records], marker="o", ms=3, label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key in dict.fromkeys([f"val_{metric}", "val_top5"]):
        if any(key in r for r in records):
            ax2.plot(epochs, [r.get(key) for r in records], marker="o", ms=3, label=key.replace("_", " "))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("%")
    ax2.legend()
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
