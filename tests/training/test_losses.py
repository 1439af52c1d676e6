"""The training loss: cross-entropy + soft-IoU/Dice, ignore pixels, class weights, config errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from effdetseg.errors import EffdetsegError
from effdetseg.engine.losses import LovaszSoftmaxLoss, RegionLoss, build_loss

IGNORE = 255


def confident_logits(target: torch.Tensor, num_classes: int, margin: float = 30.0) -> torch.Tensor:
    """Logits that put (almost) all probability on ``target`` (ignored pixels: class 0)."""
    safe = torch.where(target == IGNORE, torch.zeros_like(target), target)
    return F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * margin


@pytest.mark.parametrize("loss_type", ["iou", "dice"])
def test_region_loss_is_zero_for_a_perfect_prediction_and_large_for_a_wrong_one(loss_type: str) -> None:
    target = torch.randint(0, 4, (2, 16, 16))
    loss = RegionLoss(loss_type, smooth=0.0)
    assert loss(confident_logits(target, 4), target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = confident_logits((target + 1) % 4, 4)
    assert loss(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_soft_iou_matches_a_hand_computed_value() -> None:
    # One image, two classes, 4 pixels; probabilities p(class 1) = [0.9, 0.6, 0.2, 0.1], truth [1, 1, 0, 0].
    p1 = torch.tensor([0.9, 0.6, 0.2, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))]).reshape(1, 2, 2, 2)
    target = torch.tensor([1, 1, 0, 0]).reshape(1, 2, 2)
    # class 1: I = 1.5, pred area 1.8, target area 2 → IoU = 1.5 / 2.3
    # class 0: p0 = [0.1, 0.4, 0.8, 0.9]; I = 1.7, pred area 2.2, target 2 → IoU = 1.7 / 2.5
    expected = 1 - (1.5 / 2.3 + 1.7 / 2.5) / 2
    assert RegionLoss("iou", smooth=0.0)(logits, target).item() == pytest.approx(expected, rel=1e-5)
    dice = 1 - (2 * 1.5 / 3.8 + 2 * 1.7 / 4.2) / 2
    assert RegionLoss("dice", smooth=0.0)(logits, target).item() == pytest.approx(dice, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["iou", "dice"])
def test_ignored_pixels_do_not_change_the_loss_or_get_gradient(loss_type: str) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :3] = IGNORE
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss_fn = build_loss(
        OmegaConf.create(
            {
                "distribution": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": IGNORE},
                "region": {"_target_": "effdetseg.engine.losses.RegionLoss", "loss_type": loss_type},
            }
        ),
        num_classes=3,
    )
    total, parts = loss_fn(logits, target)
    total.backward()
    assert set(parts) == {"distribution", "region"}
    assert logits.grad[:, :, :3].abs().max().item() == 0.0
    assert logits.grad[:, :, 3:].abs().max().item() > 0.0
    # Changing the logits at ignored pixels changes nothing.
    other = logits.detach().clone()
    other[:, :, :3] = torch.randn_like(other[:, :, :3]) * 10
    assert loss_fn(other, target)[0].item() == pytest.approx(total.item(), rel=1e-6)


def test_all_ignored_gives_zero_region_loss_not_nan() -> None:
    target = torch.full((1, 4, 4), IGNORE)
    loss = RegionLoss("iou")(torch.randn(1, 3, 4, 4), target)
    assert loss.item() == 0.0 and not math.isnan(loss.item())


def test_weights_combine_terms_and_class_weights_are_used() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    base = {
        "distribution": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": IGNORE, "weight": None},
        "distribution_weight": 0.5,
        "region": {"_target_": "effdetseg.engine.losses.RegionLoss", "loss_type": "dice"},
        "region_weight": 2.0,
    }
    total, parts = build_loss(OmegaConf.create(base), 3)(logits, target)
    ce = F.cross_entropy(logits, target)
    assert parts["distribution"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * ce.item() + 2.0 * parts["region"].item(), rel=1e-6)

    weighted = dict(base, distribution=dict(base["distribution"], weight=[1.0, 5.0, 0.5]))
    _, parts_w = build_loss(OmegaConf.create(weighted), 3)(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 5.0, 0.5]))
    assert parts_w["distribution"].item() == pytest.approx(expected.item(), rel=1e-6)

    no_region = dict(base, region=None)
    total_ce, parts_ce = build_loss(OmegaConf.create(no_region), 3)(logits, target)
    assert set(parts_ce) == {"distribution"} and total_ce.item() == pytest.approx(0.5 * ce.item(), rel=1e-6)


def test_label_smoothing_reaches_cross_entropy() -> None:
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    cfg = {"distribution": {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.2}, "region": None}
    _, parts = build_loss(OmegaConf.create(cfg), 3)(logits, target)
    assert parts["distribution"].item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2).item(), rel=1e-6)


def test_config_errors_name_the_key() -> None:
    region = {"_target_": "effdetseg.engine.losses.RegionLoss", "loss_type": "jaccard"}
    with pytest.raises(EffdetsegError, match=r"train\.loss\.region\.loss_type"):
        build_loss(OmegaConf.create({"distribution": None, "region": region}), 3)
    ce = {"_target_": "torch.nn.CrossEntropyLoss", "weight": [1.0, 2.0]}
    with pytest.raises(EffdetsegError, match=r"train\.loss\.distribution\.weight: 2 class weights for 3 classes"):
        build_loss(OmegaConf.create({"distribution": ce, "region": None}), 3)
    with pytest.raises(EffdetsegError, match="both distribution and region are disabled"):
        build_loss(OmegaConf.create({"distribution": None, "region": None}), 3)


def test_lovasz_equals_one_minus_iou_on_hard_predictions() -> None:
    """At a hard (one-hot) prediction the Lovász extension is the Jaccard loss itself."""
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, :4] = 255
    prediction = torch.randint(0, 3, (2, 8, 8))
    logits = F.one_hot(prediction, 3).permute(0, 3, 1, 2).float() * 60.0
    valid = target != 255
    ious = []
    for c in range(3):
        p, t = (prediction == c) & valid, (target == c) & valid
        if t.any():
            ious.append((p & t).sum().item() / (p | t).sum().item())
    expected = 1.0 - sum(ious) / len(ious)
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected, abs=1e-5)


def test_lovasz_gradient_lowers_the_loss_and_all_ignored_is_zero() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16))
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    loss = LovaszSoftmaxLoss()
    before = loss(logits, target)
    before.backward()
    after = loss(logits.detach() - 5.0 * logits.grad, target)
    assert after.item() < before.item()
    ignored = loss(torch.randn(1, 4, 4, 4, requires_grad=True), torch.full((1, 4, 4), 255))
    assert ignored.item() == 0.0 and ignored.requires_grad


def test_lovasz_is_a_region_term_of_the_config() -> None:
    loss = build_loss({
        "distribution": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": 255},
        "region": {"_target_": "effdetseg.engine.losses.LovaszSoftmaxLoss", "ignore_index": 255},
    }, num_classes=4)
    total, parts = loss(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8)))
    assert set(parts) == {"distribution", "region"} and torch.isfinite(total)


def test_lovasz_with_a_stride_scores_the_subsampled_pixels() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    expected = LovaszSoftmaxLoss()(logits[..., ::2, ::2], target[..., ::2, ::2])
    assert LovaszSoftmaxLoss(stride=2)(logits, target).item() == pytest.approx(expected.item())
    with pytest.raises(EffdetsegError, match="train.loss.region.stride"):
        LovaszSoftmaxLoss(stride=0)
    as_region_type = RegionLoss("lovasz", stride=2)(logits, target)
    assert as_region_type.item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- OHEM, focal, class weights

OHEM = "effdetseg.engine.losses.OhemCrossEntropyLoss"
FOCAL = "effdetseg.engine.losses.FocalLoss"


def _two_class_logits(p_true: list[float], target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1×2×1×N logits whose softmax gives each pixel probability ``p_true`` of its target class."""
    p = torch.tensor(p_true)
    t = torch.tensor(target)
    logit_true = torch.log(p / (1 - p))
    logits = torch.zeros(2, len(p_true))
    logits[t, torch.arange(len(t))] = logit_true
    return logits.reshape(1, 2, 1, -1), t.reshape(1, 1, -1)


def test_ohem_keeps_the_pixels_below_the_threshold_and_tops_up_to_min_kept() -> None:
    from effdetseg.engine.losses import OhemCrossEntropyLoss

    p = [0.95, 0.9, 0.6, 0.3, 0.8, 0.5]
    logits, target = _two_class_logits(p, [0, 1, 1, 0, 1, 0])
    ce = [-math.log(v) for v in p]
    # threshold 0.7: pixels with p < 0.7 → 0.6, 0.3, 0.5
    hard = (ce[2] + ce[3] + ce[5]) / 3
    assert OhemCrossEntropyLoss(threshold=0.7, min_kept=0)(logits, target).item() == pytest.approx(hard, rel=1e-5)
    # min_kept 4 adds the next hardest (0.8)
    top4 = (ce[2] + ce[3] + ce[5] + ce[4]) / 4
    assert OhemCrossEntropyLoss(threshold=0.7, min_kept=4)(logits, target).item() == pytest.approx(top4, rel=1e-5)
    # keep_fraction 0.5 of 6 → the 3 hardest, whatever the threshold
    assert OhemCrossEntropyLoss(keep_fraction=0.5, min_kept=0)(logits, target).item() == pytest.approx(hard, rel=1e-5)
    # everything kept: plain cross-entropy
    assert OhemCrossEntropyLoss(threshold=1.0, min_kept=0)(logits, target).item() == pytest.approx(sum(ce) / 6, rel=1e-5)


def test_ohem_ignores_pixels_and_gives_gradient_only_to_kept_ones() -> None:
    from effdetseg.engine.losses import OhemCrossEntropyLoss

    logits, target = _two_class_logits([0.95, 0.9, 0.6, 0.3], [0, 1, 1, 0])
    target[0, 0, 3] = IGNORE  # the hardest pixel is ignored, not mined
    logits.requires_grad_(True)
    loss = OhemCrossEntropyLoss(threshold=0.7, min_kept=0)(logits, target)
    assert loss.item() == pytest.approx(-math.log(0.6), rel=1e-5)
    loss.backward()
    grad = logits.grad.abs().sum(1)[0, 0]
    assert grad[2] > 0 and grad[0] == 0 and grad[1] == 0 and grad[3] == 0
    all_ignored = OhemCrossEntropyLoss()(logits, torch.full_like(target, IGNORE))
    assert all_ignored.item() == 0.0 and all_ignored.requires_grad


def test_focal_loss_matches_hand_computation_and_is_cross_entropy_at_gamma_zero() -> None:
    from effdetseg.engine.losses import FocalLoss

    p = [0.9, 0.6, 0.2]
    logits, target = _two_class_logits(p, [1, 0, 1])
    expected = sum((1 - v) ** 2 * -math.log(v) for v in p) / 3
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    # class weights reduce as torch's weighted cross-entropy: Σ w·l / Σ w
    weight = torch.tensor([1.0, 3.0])
    weighted = FocalLoss(gamma=0.0, weight=weight)(logits, target).item()
    assert weighted == pytest.approx(F.cross_entropy(logits, target, weight=weight).item(), rel=1e-5)
    target[0, 0, 0] = IGNORE
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=IGNORE).item(), rel=1e-5)


def test_focal_gradient_favours_the_hard_pixel() -> None:
    from effdetseg.engine.losses import FocalLoss

    logits, target = _two_class_logits([0.95, 0.3], [0, 1])
    logits.requires_grad_(True)
    FocalLoss(gamma=2.0)(logits, target).backward()
    grad = logits.grad.abs().sum(1)[0, 0]
    assert grad[1] > 50 * grad[0]


def test_median_frequency_weights_by_hand() -> None:
    from effdetseg.engine.losses import median_frequency_weights

    # 2 images of 10 labelled pixels: class 0 in both (12 px of 20), class 1 only in image 0 (2 of 10),
    # class 2 in both (6 of 20) → frequencies 0.6, 0.2, 0.3; median 0.3; class 3 absent → 1.
    counts = np.array([[5, 2, 3, 0], [7, 0, 3, 0]])
    assert median_frequency_weights(counts) == pytest.approx([0.5, 1.5, 1.0, 1.0])


def test_class_weights_from_the_config_reach_every_distribution_term() -> None:
    counts = np.array([[5, 2, 3], [7, 0, 3]])
    for target in ("torch.nn.CrossEntropyLoss", OHEM, FOCAL):
        cfg = {"distribution": {"_target_": target, "ignore_index": IGNORE}, "region": None, "class_weights": "median_frequency"}
        loss = build_loss(OmegaConf.create(cfg), 3, lambda: counts)
        assert loss.distribution.weight.tolist() == pytest.approx([0.5, 1.5, 1.0])
    listed = build_loss(OmegaConf.create({"distribution": {"_target_": FOCAL}, "region": None, "class_weights": [1, 2, 3]}), 3)
    assert listed.distribution.weight.tolist() == [1.0, 2.0, 3.0]


def test_focal_and_ohem_combine_with_a_region_term() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randint(0, 3, (2, 8, 8))
    for target_name in (OHEM, FOCAL):
        cfg = {"distribution": {"_target_": target_name, "ignore_index": IGNORE},
               "region": {"_target_": "effdetseg.engine.losses.LovaszSoftmaxLoss", "ignore_index": IGNORE}}
        total, parts = build_loss(OmegaConf.create(cfg), 3)(logits, target)
        assert set(parts) == {"distribution", "region"}
        assert total.item() == pytest.approx((parts["distribution"] + parts["region"]).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"distribution": {"_target_": OHEM, "threshold": 1.5}}, r"train\.loss\.distribution\.threshold: expected a probability"),
        ({"distribution": {"_target_": OHEM, "min_kept": -1}}, r"train\.loss\.distribution\.min_kept"),
        ({"distribution": {"_target_": OHEM, "keep_fraction": 0}}, r"train\.loss\.distribution\.keep_fraction"),
        ({"distribution": {"_target_": FOCAL, "gamma": -1}}, r"train\.loss\.distribution\.gamma"),
        ({"class_weights": "inverse"}, r"train\.loss\.class_weights: expected null, a list of 3 weights or one of"),
        ({"class_weights": [1, 2]}, r"train\.loss\.class_weights: 2 class weights for 3 classes"),
        ({"class_weights": [1, -2, 1]}, r"train\.loss\.class_weights: weights must be finite"),
        ({"class_weights": [1, 1, 1], "distribution": {"_target_": "torch.nn.CrossEntropyLoss", "weight": [1, 1, 1]}},
         r"train\.loss\.class_weights: set it or train\.loss\.distribution\.weight, not both"),
    ],
)
def test_bad_loss_values_are_one_line_naming_the_key(cfg: dict, message: str) -> None:
    full = {"distribution": {"_target_": "torch.nn.CrossEntropyLoss"}, "region": None, **cfg}
    with pytest.raises(EffdetsegError, match=message):
        build_loss(OmegaConf.create(full), 3, lambda: np.ones((1, 3)))
