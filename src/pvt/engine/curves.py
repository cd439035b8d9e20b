"""The learning-curve PNG of a run, drawn from its ``metrics.jsonl`` records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base.io import atomic_write

__all__ = ["plot_curves"]


def plot_curves(records: list[dict[str, Any]], path: str | Path, metric: str, title: str = "") -> None:
    """Losses (train, val), ``val_<metric>`` (and ``val_top5``), then, where the records have them, the
    learning rate at the end of each epoch (``lr``, log scale) and the training speed (``images_per_s``)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    extra = [(k, label) for k, label in (("lr", "learning rate"), ("images_per_s", "training images/s"))
             if any(r.get(k) is not None for r in records)]
    rows = 2 if extra else 1  # lr and speed go on a second row
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4 * rows), squeeze=False)
    axes = list(axes.flat)
    ax1, ax2 = axes[0], axes[1]
    for ax in axes[2 + len(extra):]:
        ax.axis("off")
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
    for ax, (key, label) in zip(axes[2:], extra):
        ax.plot(epochs, [r.get(key) for r in records], marker="o", ms=3, color="tab:green")
        if key == "lr" and all((r.get(key) or 0) > 0 for r in records):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
