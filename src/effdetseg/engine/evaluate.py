"""Validation and evaluation: one confusion matrix over the whole dataset, all ranks summed.

Each image goes through the one inference path (:func:`effdetseg.inference.segment.segment`) with
the model record's preprocessing, exactly as ``predict`` runs it, and its label map — at the
image's original size — is scored against the mask.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..inference.segment import NO_TTA, Runner, TestTimeAugmentation, as_runner, segment
from ..io.record import Preprocessing
from .metrics import ConfusionMatrix


def evaluate(
    model: nn.Module | Runner,
    loader: DataLoader,
    num_classes: int,
    preprocessing: Preprocessing,
    *,
    ignore_index: int = 255,
    tta: TestTimeAugmentation = NO_TTA,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    description: str = "validate",
) -> ConfusionMatrix:
    """The all-reduced confusion matrix of a prepared ``model`` (see ``prepare_for_inference``), or
    of a ``Predictor``'s runner (ONNX Runtime, OpenVINO …), on ``loader`` (uint8 images,
    ``collate_list`` batches)."""
    model = as_runner(model)
    device = getattr(model, "device", torch.device("cpu"))
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    batch_size = loader.batch_size or 1
    for batch in tqdm(loader, desc=description, disable=None if progress else True, leave=False, dynamic_ncols=True):
        results = segment(model, batch["image"], preprocessing, tta=tta, batch_size=batch_size, amp_dtype=amp_dtype)
        for result, mask in zip(results, batch["mask"]):
            matrix.update(result.labels, mask.to(device))
    matrix.all_reduce()
    return matrix
