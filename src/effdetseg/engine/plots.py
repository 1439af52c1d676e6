"""Pictures of a finished run: learning curves, per-class IoU bars, validation predictions.

Written with matplotlib's Agg backend (no display needed). The per-class IoU chart lives in
``pictures/charts.py`` (the model folder draws it too) and is re-exported here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.labels import LabelSet
from ..pictures.charts import plot_class_iou, pyplot
from ..pictures.label_maps import color_mask

__all__ = ["plot_curves", "plot_class_iou", "plot_prediction_grid"]


def plot_curves(history: Sequence[dict], path: Path) -> None:
    """Train loss, validation mIoU (model and EMA) and learning rate by epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set(title="train loss", xlabel="epoch")
    validated = [h for h in history if h.get("val")]
    if validated:
        x = [h["epoch"] for h in validated]
        axes[1].plot(x, [_pct(h["val"]["miou"]) for h in validated], marker="o", label="model")
        if any(h.get("val_ema") for h in validated):
            axes[1].plot(x, [_pct(h["val_ema"]["miou"]) if h.get("val_ema") else math.nan for h in validated], marker="s", label="EMA")
        axes[1].legend()
    axes[1].set(title="validation mIoU (%)", xlabel="epoch")
    axes[2].plot(epochs, [h["lr"] for h in history], marker="o")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_prediction_grid(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    ids: Sequence[str],
    labels: LabelSet,
    path: Path,
) -> None:
    """One row per image: image, ground truth, prediction; a legend of the classes below."""
    plt = pyplot()
    from matplotlib.patches import Patch

    names, colors = labels.names, labels.colors
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows + 0.8), squeeze=False)
    for r, (image, target, pred, sample_id) in enumerate(zip(images, targets, predictions, ids)):
        for c, (picture, title) in enumerate(((image, sample_id), (color_mask(target, labels), "ground truth"), (color_mask(pred, labels), "prediction"))):
            axes[r, c].imshow(picture)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="black", label=n) for n, c in zip(names, colors)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (3 * rows + 0.8), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pct(value: float | None) -> float:
    return math.nan if value is None else 100 * value
