"""Dataset-level confusion-matrix metrics."""
from __future__ import annotations

import math

import pytest
import torch

from effdetseg.engine.metrics import ConfusionMatrix, SegmentationMetrics


def test_matrix_counts_pixels_and_skips_ignore() -> None:
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = cm.compute()
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+1+1), class 1: 2/(2+1+0), class 2: 1/(1+0+1)
    assert m.iou == pytest.approx((1 / 3, 2 / 3, 1 / 2))
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 6)
    assert m.class_accuracy == pytest.approx((1 / 2, 1.0, 1 / 2))
    assert m.mean_class_accuracy == pytest.approx(2 / 3)
    assert m.pixels == 6


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    m = cm.compute()
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[3])
    assert m.miou == pytest.approx((1 / 2 + 1 / 2) / 2)
    table = m.table(["bg", "a", "b", "c"])
    assert "n/a" in table and "mIoU" in table and "50.00" in table
    d = m.to_dict(["bg", "a", "b", "c"])
    assert d["per_class"]["b"]["iou"] is None and d["miou"] == pytest.approx(0.5)


def test_a_class_predicted_but_absent_counts_as_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m.iou[2] == 0.0 and math.isnan(m.iou[1])
    assert m.miou == pytest.approx((0.5 + 0.0) / 2)


def test_dataset_level_miou_differs_from_the_mean_of_batch_mious() -> None:
    """The original averaged per-batch mIoU; one confusion matrix over the dataset is the definition."""
    # Batch 1: 100 pixels of class 1, all right. Batch 2: 1 pixel of class 1, predicted as 0, plus 99 background.
    t1, p1 = torch.ones(100, dtype=torch.long), torch.ones(100, dtype=torch.long)
    t2 = torch.zeros(100, dtype=torch.long)
    t2[0] = 1
    p2 = torch.zeros(100, dtype=torch.long)
    dataset = ConfusionMatrix(2)
    per_batch = []
    for t, p in ((t1, p1), (t2, p2)):
        dataset.update(p, t)
        batch = ConfusionMatrix(2)
        batch.update(p, t)
        per_batch.append(batch.compute().miou)
    m = dataset.compute()
    # dataset: class 0 IoU = 99/100, class 1 IoU = 100/101
    assert m.miou == pytest.approx((99 / 100 + 100 / 101) / 2)
    assert sum(per_batch) / 2 == pytest.approx((1.0 + (99 / 100 + 0.0) / 2) / 2)
    assert abs(m.miou - sum(per_batch) / 2) > 0.2


def test_from_matrix_equals_accumulated_updates_and_shapes_are_checked() -> None:
    torch.manual_seed(0)
    cm = ConfusionMatrix(5)
    target, pred = torch.randint(0, 5, (3, 7, 9)), torch.randint(0, 5, (3, 7, 9))
    for i in range(3):
        cm.update(pred[i], target[i])
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    assert torch.equal(cm.matrix, whole.matrix)
    assert cm.compute().iou == SegmentationMetrics.from_matrix(whole.matrix).iou
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(pred[0], target)
    with pytest.raises(ValueError, match="class 7"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]))


def test_all_reduce_without_a_process_group_is_a_no_op() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(before, cm.matrix)
