"""Charts of a model's scores, drawn with matplotlib's Agg backend (no display needed).

Here, below both the training loop (``engine/plots.py``: a finished run's pictures) and the model
folder (``sharing/hub.py``), so that neither imports the other: per-class IoU → one bar chart.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_iou(names: Sequence[str], iou: Sequence[float], colors: Sequence[Sequence[int]], path: Path, title: str) -> None:
    """Horizontal bars, one per class in its label color; classes absent from the data say n/a."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    values = [0.0 if math.isnan(v) else 100 * v for v in iou]
    ys = np.arange(len(names))
    ax.barh(ys, values, color=[np.array(c) / 255 for c in colors], edgecolor="black", linewidth=0.5)
    for y, v, raw in zip(ys, values, iou):
        ax.text(v + 1, y, "n/a" if math.isnan(raw) else f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(ys, labels=list(names))
    ax.invert_yaxis()
    ax.set(xlim=(0, 110), xlabel="IoU (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
