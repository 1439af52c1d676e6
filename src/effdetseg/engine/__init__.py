"""Training and evaluation: losses, dataset-level metrics, schedules, the loop, training-state
checkpoints, DDP and plots.

Entry points: ``engine.run.run_training(cfg)`` (what ``effdetseg train`` runs) and
``engine.evaluate.evaluate`` (shared by validation and ``effdetseg evaluate``).

A run, in modules: ``setup`` (the config read once into a typed ``TrainSetup``) → ``builders``
(data, model, optimization) → ``trainer`` (the loop) → ``checkpoints`` (``last.pth``,
``best.pth``, resume) and ``validation`` (metrics during training, the end of the run's plots).
"""
from .losses import RegionLoss, SegmentationLoss, build_loss
from .metrics import ConfusionMatrix, SegmentationMetrics
from .schedulers import WarmupCosineLR, WarmupPolyLR

__all__ = [
    "ConfusionMatrix",
    "SegmentationMetrics",
    "RegionLoss",
    "SegmentationLoss",
    "build_loss",
    "WarmupPolyLR",
    "WarmupCosineLR",
]
