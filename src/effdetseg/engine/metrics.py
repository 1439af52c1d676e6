"""Dataset-level segmentation metrics from one confusion matrix.

The matrix is accumulated over the whole validation set (all ranks summed under DDP) and the
metrics are computed once at the end. Averaging per-batch mIoUs, as the original project did,
weights a batch with one tiny object like a batch full of it and is not the mIoU of the dataset.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """``matrix[t, p]`` = number of pixels of true class ``t`` predicted as ``p`` (ignored pixels skipped)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add class-id maps of the same shape (any batch layout)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        target = target.reshape(-1).to(self.matrix.device)
        prediction = prediction.reshape(-1).to(self.matrix.device)
        valid = target != self.ignore_index
        target, prediction = target[valid].long(), prediction[valid].long()
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(f"target holds class {int(target.max())} but there are {self.num_classes} classes")
        index = target * self.num_classes + prediction
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the matrices of all ranks (a no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> SegmentationMetrics:
        return SegmentationMetrics.from_matrix(self.matrix.cpu())


@dataclass(frozen=True)
class SegmentationMetrics:
    """Per-class IoU and accuracy (NaN for a class absent from both ground truth and prediction)."""

    iou: tuple[float, ...]
    class_accuracy: tuple[float, ...]
    pixel_accuracy: float
    miou: float
    mean_class_accuracy: float
    pixels: int
    matrix: torch.Tensor = field(repr=False, compare=False)  # the int64 confusion matrix (rows: truth)

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> SegmentationMetrics:
        m = matrix.double()
        true_positive = m.diag()
        per_true = m.sum(1)  # ground-truth pixels of each class
        per_pred = m.sum(0)
        union = per_true + per_pred - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, math.nan))
        accuracy = torch.where(per_true > 0, true_positive / per_true.clamp(min=1), torch.full_like(per_true, math.nan))
        total = m.sum()
        return cls(
            iou=tuple(iou.tolist()),
            class_accuracy=tuple(accuracy.tolist()),
            pixel_accuracy=float(true_positive.sum() / total) if total > 0 else math.nan,
            miou=_nanmean(iou),
            mean_class_accuracy=_nanmean(accuracy),
            pixels=int(total),
            matrix=matrix.clone(),
        )

    def to_dict(self, class_names: Sequence[str] | None = None, with_matrix: bool = False) -> dict:
        """JSON-ready numbers (NaN → null); ``with_matrix`` adds the confusion matrix (rows: truth)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]
        extra = {"confusion_matrix": self.matrix.tolist()} if with_matrix else {}
        return {
            "miou": _json_float(self.miou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "mean_class_accuracy": _json_float(self.mean_class_accuracy),
            "pixels": self.pixels,
            "per_class": {
                name: {"iou": _json_float(iou), "accuracy": _json_float(acc)}
                for name, iou, acc in zip(names, self.iou, self.class_accuracy)
            },
            **extra,
        }

    def table(self, class_names: Sequence[str] | None = None, title: str | None = None) -> str:
        """Per-class IoU and accuracy, then mIoU, pixel accuracy and mean class accuracy, as text."""
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(len(self.iou))]
        width = max(len("mean class accuracy"), *(len(n) for n in names))
        rule = "-" * (width + 22)
        lines = [title] if title else []
        lines += [f"{'id':>3} {'class':<{width}} {'IoU':>8} {'Acc':>8}", rule]
        for i, (name, iou, acc) in enumerate(zip(names, self.iou, self.class_accuracy)):
            lines.append(f"{i:>3} {name:<{width}} {_percent(iou):>8} {_percent(acc):>8}")
        lines += [
            rule,
            f"{'':>3} {'mIoU':<{width}} {_percent(self.miou):>8}",
            f"{'':>3} {'pixel accuracy':<{width}} {_percent(self.pixel_accuracy):>8}",
            f"{'':>3} {'mean class accuracy':<{width}} {_percent(self.mean_class_accuracy):>8}",
        ]
        return "\n".join(lines)


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)
