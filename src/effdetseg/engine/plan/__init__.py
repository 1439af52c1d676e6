"""The training plan: config values derived from the data's fingerprint, the time budget and the machine.

``effdetseg train data=folder data.root=DIR train.max_minutes=M`` — and ``data=camvid`` — run
``plan_training`` before anything is written: the data is fingerprinted
(:mod:`effdetseg.data.fingerprint`), the rules turn fingerprint + budget + machine into
config values, and every value the command line did not set is applied. The plan is printed as one
block, stored in the config (``plan``: so in ``config.yaml`` and in every checkpoint's provenance)
and in ``plan.json``. ``effdetseg data plan …`` prints it without training.

What the data and the backbone state is read, not typed (for every preset but ``synthetic``):
``labels.json`` in ``data.root`` gives the classes and their names; the mask format is detected;
``data.normalize`` is the backbone's own (timm's ``pretrained_cfg`` mean and std: 0.5 for the
``tf_efficientnet_lite*`` family); ``train.model.backbone_pretrained=auto`` is timm's ImageNet
weights, and a run that cannot get them stops before anything is written, in one line.

The rules, each with its reason, are :mod:`effdetseg.engine.plan.rules`; the plan as data and the
printed block :mod:`~effdetseg.engine.plan.record`.
"""
from __future__ import annotations

from .build import plan_training
from .command_line import overridden, user_keys
from .record import PLAN_FILE, Machine, Setting, TrainingPlan

__all__ = ["PLAN_FILE", "Machine", "Setting", "TrainingPlan", "overridden", "plan_training", "user_keys"]
