"""The rules (each applies unless the command line sets the key; the numbers come from the CamVid
ablations in the docs, generalized):

1. **Model.** On a CPU, ``efficientdet_d0_seg`` on ``tf_efficientnet_lite0`` (no squeeze-excite,
   ReLU6: the cheapest ImageNet EfficientNet per step on a CPU, and the one whose INT8 export keeps
   its accuracy). On CUDA the variant's own EfficientNet, one size up per doubling of the budget
   beyond 30 minutes (D0 < 30 min ≤ D1 < 60 ≤ D2 < 120 ≤ D3), since a GPU step costs little.
2. **Working scale.** Images are trained and predicted at their own scale (no fixed resize: a
   320×213 photo is neither stretched nor upsampled), unless the median long side is over
   ``MAX_WORKING_SIDE`` (2048): then every image is scaled so its long side is that, for training
   and inference alike (``keep_aspect``).
3. **Crop.** Random square crops of ``ceil32(median short side)``, at most ``CROP_CPU`` (256) on a
   CPU and ``CROP_CUDA`` (512) on CUDA, at least 128: near the images' own scale, and small on a CPU
   because a time budget is worth more steps than larger views (CamVid: 256² crops beat whole
   frames). Smaller images are padded with the ignore label. Random scale ±25 % around the working
   scale, horizontal flip, brightness/contrast: no rotation or shear, whose borders waste pixels.
   When one class holds two thirds of the pixels or more (a background), one crop in three is
   centred on a pixel of another class (nnU-Net's foreground oversampling): rare classes are then in
   most batches instead of in a few percent of the crops.
4. **Batch.** 8 on a CPU (CamVid: batches of 4 made more steps and scored lower), 16 on CUDA; at
   most half the training images, at least 2 (BatchNorm).
5. **Pretrained backbone.** ImageNet weights by default (``auto``); with them AdamW at lr 1e-3,
   the new decoder at ×5, no warm-up, poly decay over the budget, and the stem and first stages
   frozen through stride 4 (their backward pass at the highest resolution is the dearest per
   parameter, and low-level filters transfer unchanged: detectron2's and mmdet's default). From
   scratch (``false``): lr 4e-3, one decoder rate, 5 % warm-up, nothing frozen.
6. **EMA** only when the run is expected to make ``EMA_MIN_STEPS`` (3000) steps or more: an
   average with decay 0.998 lags a short run.
7. **Validation.** Under a time budget, once, after the last step (steps are worth more, and the
   final validation is reserved inside the budget); with ``num_epochs``, every k epochs with k
   chosen so validating costs at most ``VALIDATION_SHARE`` (10 %) of the training compute.
8. **Cache.** Decoded images and masks stay in memory (``data.cache=ram``) when train + val fit
   in 75 % of the memory this process may use (the container's limit included); the fingerprint's
   decode is that cache.
9. **Loss.** Cross-entropy + Lovász-softmax on every other pixel (``train.yaml``'s default): the
   Lovász term optimizes IoU per class directly, which keeps rare classes from vanishing in
   cross-entropy's pixel average.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...data.fingerprint import Fingerprint
from .record import Machine, TrainingPlan

CPU_BACKBONE = "tf_efficientnet_lite0"
CPU_MODEL = "efficientdet_d0_seg"
CUDA_MODELS = ((120.0, "efficientdet_d3_seg"), (60.0, "efficientdet_d2_seg"), (30.0, "efficientdet_d1_seg"), (0.0, "efficientdet_d0_seg"))
MAX_WORKING_SIDE = 2048
CROP_CPU, CROP_CUDA, CROP_MIN = 256, 512, 128
BATCH_CPU, BATCH_CUDA = 8, 16
EMA_MIN_STEPS = 3000
# Seconds per optimizer step used to foresee a budget's step count (CPU: D0-Lite0, 256², batch 8,
# two cores, as measured on CamVid; CUDA: an estimate).
NOMINAL_STEP_S = {"cpu": 0.55, "cuda": 0.06}
VALIDATION_SHARE = 0.1
SCALE_LIMIT = 0.25
DOMINANT_SHARE = 2 / 3
FOREGROUND_CROPS = 1 / 3


def choose_model(plan: TrainingPlan, machine: Machine, minutes: float | None) -> None:
    if machine.device == "cpu":
        plan.set("train.model.name", CPU_MODEL, "the smallest variant: a CPU step is dear")
        plan.set("train.model.backbone", CPU_BACKBONE, "no squeeze-excite, ReLU6: the cheapest ImageNet EfficientNet on a CPU")
        return
    budget = math.inf if minutes is None else minutes
    name = next(model for least, model in CUDA_MODELS if budget >= least)
    plan.set("train.model.name", name, f"CUDA, {'no budget' if minutes is None else f'{minutes:g} minutes'}: the largest variant the budget trains")
    plan.set("train.model.backbone", None, "the variant's own EfficientNet")


def choose_scale_and_crop(plan: TrainingPlan, fp: Fingerprint, machine: Machine) -> int:
    """The working scale (inference resize) and the training crop; returns the crop side."""
    height, width = fp.median_size
    long_side, short_side = max(height, width), min(height, width)
    resize: list[dict[str, Any]] = []
    if long_side > MAX_WORKING_SIDE:
        scale = MAX_WORKING_SIDE / long_side
        short_side = round(short_side * scale)
        resize = [{"_target_": "albumentations.LongestMaxSize", "max_size": MAX_WORKING_SIDE, "interpolation": 1,
                   "mask_interpolation": 0, "p": 1.0}]
        plan.set("data.augmentation.inference_resize", "keep_aspect",
                 f"median long side {long_side} px > {MAX_WORKING_SIDE}: images scaled to {MAX_WORKING_SIDE} px, trained and predicted so")
        plan.set("data.preprocessing.inference_size", MAX_WORKING_SIDE, "the long side images are predicted at")
    else:
        plan.set("data.augmentation.inference_resize", "original", "predicted at the images' own scale, as trained")
    cap = CROP_CPU if machine.device == "cpu" else CROP_CUDA
    crop = max(CROP_MIN, min(cap, 32 * math.ceil(short_side / 32)))
    plan.set("data.preprocessing.resize_height", crop, f"random {crop}² crops: median short side {short_side} px, at most {cap} on {machine.device}")
    plan.set("data.preprocessing.resize_width", crop, "square crops")
    random_crop: dict[str, Any] = {"_target_": "albumentations.RandomCrop", "height": crop, "width": crop}
    dominant = int(np.argmax(fp.class_pixels)) if fp.class_pixels else 0
    oversample = bool(fp.class_pixels) and fp.class_pixels[dominant] >= DOMINANT_SHARE
    if oversample:  # nnU-Net's foreground oversampling, with the dominant class as the background
        random_crop = {"_target_": "albumentations.OneOf", "p": 1.0, "transforms": [
            {**random_crop, "p": 1.0 - FOREGROUND_CROPS},
            {"_target_": "albumentations.CropNonEmptyMaskIfExists", "height": crop, "width": crop,
             "ignore_values": [dominant, 255], "p": FOREGROUND_CROPS},
        ]}
    pipeline = resize + [
        {"_target_": "albumentations.RandomScale", "scale_limit": [-SCALE_LIMIT, SCALE_LIMIT], "interpolation": 1, "mask_interpolation": 0, "p": 1.0},
        {"_target_": "albumentations.PadIfNeeded", "min_height": crop, "min_width": crop, "border_mode": 0, "fill": 0, "fill_mask": 255},
        random_crop,
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
        {"_target_": "albumentations.RandomBrightnessContrast", "p": 0.5},
    ]
    why = f"scale ±{int(100 * SCALE_LIMIT)} %, pad with ignore, crop, flip, brightness/contrast"
    if oversample:
        share = f"{100 * fp.class_pixels[dominant]:.0f} %"
        why += f"; {fp.class_names[dominant]} holds {share} of the pixels: 1 crop in {round(1 / FOREGROUND_CROPS)} centred on another class"
    plan.set("data.augmentation.train", pipeline, why)
    return crop


def choose_batch(plan: TrainingPlan, fp: Fingerprint, machine: Machine) -> int:
    batch = BATCH_CPU if machine.device == "cpu" else BATCH_CUDA
    batch = max(2, min(batch, fp.train_images // 2))
    plan.set("data.batch_size", batch, f"{machine.device}" + (f"; {fp.train_images} training images" if batch < BATCH_CPU else ""))
    return batch


def choose_optimization(plan: TrainingPlan, pretrained: bool) -> None:
    if pretrained:
        plan.set("train.optimizer.lr", 1e-3, "fine-tuning an ImageNet backbone (AdamW)")
        plan.set("train.decoder_lr_scale", 5.0, "the new BiFPN and head learn 5× faster than the pretrained backbone")
        plan.set("train.freeze_backbone_stride", 4, "stem and first stages keep their ImageNet filters (and skip their dearest backward pass)")
        plan.set("train.scheduler.warmup_fraction", 0.0, "no warm-up: the backbone is trained already")
    else:
        plan.set("train.optimizer.lr", 4e-3, "from scratch (AdamW)")
        plan.set("train.decoder_lr_scale", 1.0, "one rate: nothing is pretrained")
        plan.set("train.freeze_backbone_stride", 0, "from scratch: every layer trains")
        plan.set("train.scheduler.warmup_fraction", 0.05, "from scratch: 5 % linear warm-up")


def expected_steps(fp: Fingerprint, machine: Machine, minutes: float | None, batch: int, epochs: int) -> float:
    if minutes is not None:
        return 60.0 * minutes / NOMINAL_STEP_S[machine.device]
    return epochs * math.ceil(fp.train_images / batch)


def choose_ema_and_validation(plan: TrainingPlan, fp: Fingerprint, machine: Machine, minutes: float | None,
                              batch: int, crop: int, epochs: int) -> None:
    steps = expected_steps(fp, machine, minutes, batch, epochs)
    plan.set("train.ema.enabled", steps >= EMA_MIN_STEPS,
             f"about {steps:.0f} steps expected: EMA {'helps' if steps >= EMA_MIN_STEPS else 'would lag'} (≥ {EMA_MIN_STEPS} for it)")
    if minutes is not None:
        plan.set("validation.epoch_step", 0, "under a time budget: validated once, after the last step")
        return
    height, width = fp.median_size
    validation_cost = fp.val_images * height * width  # one forward pass per validation pixel
    epoch_cost = 3 * fp.train_images * crop * crop  # forward + backward per training pixel
    every = max(1, math.ceil(validation_cost / (VALIDATION_SHARE * epoch_cost)))
    plan.set("validation.epoch_step", every, f"validating costs ≤ {int(100 * VALIDATION_SHARE)} % of the training compute")


def choose_cache(plan: TrainingPlan, fp: Fingerprint, fits: bool) -> None:
    mib = fp.decoded_bytes / 2**20
    if fits:
        plan.set("data.cache", "ram", f"{mib:.0f} MiB decoded fit in memory: decoded once, for the fingerprint and training")
    else:
        plan.set("data.cache", "none", f"{mib:.0f} MiB decoded would not fit in memory: read per step")
