"""The training plan: config values derived from the data's fingerprint, the time budget and the machine.

``effdetseg train data=folder data.root=DIR train.max_minutes=M`` — and ``data=camvid`` — run
``plan_training`` before anything is written: the data is fingerprinted
(:mod:`effdetseg.data.fingerprint`), the rules below turn fingerprint + budget + machine into
config values, and every value the command line did not set is applied. The plan is printed as one
block, stored in the config (``plan``: so in ``config.yaml`` and in every checkpoint's provenance)
and in ``plan.json``. ``effdetseg data plan …`` prints it without training.

What the data and the backbone state is read, not typed (for every preset but ``synthetic``):
``labels.json`` in ``data.root`` gives the classes and their names; the mask format is detected;
``data.normalize`` is the backbone's own (timm's ``pretrained_cfg`` mean and std: 0.5 for the
``tf_efficientnet_lite*`` family); ``train.model.backbone_pretrained=auto`` is timm's ImageNet
weights, and a run that cannot get them stops before anything is written, in one line.

The rules (each applies unless the command line sets the key; the numbers come from the CamVid
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

import json
import math
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.cache import DecodedStore, available_memory
from ..data.fingerprint import FINGERPRINT_FORMATS, Fingerprint, fits_in_memory, take_fingerprint
from ..devices import resolve_device
from ..errors import EffdetsegError, first_line
from ..models import create_model

PLAN_FILE = "plan.json"
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
PRESET_CHOICES = ("data", "recipe")


@dataclass(frozen=True)
class Machine:
    device: str  # cpu | cuda
    cores: int
    memory_bytes: int | None
    processes: int = 1

    @classmethod
    def here(cls, device: str = "auto", processes: int = 1) -> Machine:
        resolved = resolve_device(device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(resolved.type, cores, available_memory(), processes)

    def describe(self) -> str:
        memory = f", {self.memory_bytes / 2**30:.1f} GiB free" if self.memory_bytes else ""
        gpu = f" ({torch.cuda.get_device_name(0)})" if self.device == "cuda" and torch.cuda.is_available() else ""
        return f"{self.device}{gpu}, {self.cores} cores{memory}" + (f", {self.processes} processes" if self.processes > 1 else "")


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    why: str
    source: str = "plan"  # plan | yours (the command line set it: the plan's value is not applied)


@dataclass
class TrainingPlan:
    fingerprint: Fingerprint | None
    machine: Machine
    minutes: float | None
    settings: list[Setting] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, why: str) -> None:
        self.settings.append(Setting(key, value, why))

    def value(self, key: str) -> Any:
        for setting in self.settings:
            if setting.key == key:
                return setting.value
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
            "machine": asdict(self.machine),
            "minutes": self.minutes,
            "settings": [asdict(s) for s in self.settings],
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """The block printed before training."""
        budget = f"{self.minutes:g} minutes" if self.minutes else "no time budget (train.num_epochs)"
        lines = ["training plan (every value is a config key: key=value on the command line overrides it)"]
        if self.fingerprint is not None:
            lines += [f"  data     {line}" for line in self.fingerprint.summary()]
        lines.append(f"  machine  {self.machine.describe()}; {budget}")
        width = min(44, max((len(f"{s.key}={_show(s.value)}") for s in self.settings), default=0))
        for s in self.settings:
            text = f"{s.key}={_show(s.value)}"
            why = "yours (command line)" if s.source == "yours" else s.why
            lines.append(f"  {text:<{width}}  {why}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _name(transform: dict[str, Any]) -> str:
    name = str(transform.get("_target_", "?")).rsplit(".", 1)[-1]
    inner = transform.get("transforms")
    return f"{name}({'|'.join(_name(t) for t in inner)})" if isinstance(inner, list) else name


def _show(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "[" + ",".join(_name(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# --------------------------------------------------------------------------- the command line


def user_keys(overrides: Iterable[str]) -> set[str]:
    """Config keys the command line sets (``a.b=1``, ``+a.b=1``, ``~a.b``; ``data/augmentation=x`` →
    ``data.augmentation``). Choosing the data preset (``data=folder``) sets none: it is what is planned for."""
    keys = set()
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if key and key not in PRESET_CHOICES:
            keys.add(key)
    return keys


def overridden(key: str, keys: set[str]) -> bool:
    """Whether the command line set ``key``, a node above it or a key inside it."""
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)


# --------------------------------------------------------------------------- what the backbone states


def backbone_name(model_cfg: DictConfig) -> str:
    """``train.model.backbone``, or the variant's own (built on the meta device: no cost)."""
    if model_cfg.get("backbone"):
        return str(model_cfg.backbone)
    with torch.device("meta"):
        model = create_model(str(model_cfg.name), num_classes=2)
    backbone = getattr(model, "backbone", None)
    return str(getattr(backbone, "name", "")) if backbone is not None else ""


def backbone_normalization(name: str) -> tuple[list[float], list[float]] | None:
    """The mean and std the backbone's ImageNet weights were trained with (timm's pretrained_cfg)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None or cfg.mean is None or cfg.std is None or len(cfg.mean) != 3:
        return None
    return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]


def fetch_pretrained(name: str) -> None:
    """Make sure timm's ImageNet weights of ``name`` are on disk (downloaded as timm does); one
    error line naming the key and the two ways out when they cannot be had."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if name else None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    way_out = ("pass a local ImageNet weights file (train.model.backbone_pretrained=PATH) or train from scratch "
               "on purpose (train.model.backbone_pretrained=false)")
    if not hub_id:
        raise EffdetsegError(f"train.model.backbone_pretrained=auto: timm has no downloadable ImageNet weights for {name!r}; {way_out}")
    import huggingface_hub
    from huggingface_hub import constants

    filenames = ("model.safetensors", "pytorch_model.bin")
    if any(isinstance(huggingface_hub.try_to_load_from_cache(hub_id, f), str) for f in filenames):
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or not _reachable(host):
        raise EffdetsegError(
            f"train.model.backbone_pretrained=auto: the ImageNet weights of {name} ({hub_id}) are not in the local cache "
            f"and {host} cannot be reached; {way_out}"
        )
    errors = []
    for filename in filenames:
        try:
            huggingface_hub.hf_hub_download(hub_id, filename)
            return
        except Exception as e:  # no such file, hub down
            errors.append(first_line(e, with_type=True)[:160])
    raise EffdetsegError(
        f"train.model.backbone_pretrained=auto: the ImageNet weights of {name} ({hub_id}) could not be downloaded "
        f"({errors[0]}); {way_out}"
    )


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` resolves and accepts a connection on port 443 (one try, no retries)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_backbone_statements(cfg: DictConfig, keys: set[str], plan: TrainingPlan) -> None:
    """``data.normalize`` from the backbone and ``backbone_pretrained=auto`` resolved (fetched now)."""
    name = backbone_name(cfg.train.model)
    stats = backbone_normalization(name)
    if stats is not None:
        plan.set("data.normalize.mean", stats[0], f"{name}'s ImageNet normalization (timm)")
        plan.set("data.normalize.std", stats[1], f"{name}'s ImageNet normalization (timm)")
    if str(cfg.train.model.backbone_pretrained) == "auto":
        fetch_pretrained(name)
        with open_dict(cfg):
            cfg.train.model.backbone_pretrained = True


def pretrained_backbone(cfg: DictConfig) -> bool:
    value = cfg.train.model.backbone_pretrained
    return value is True or (isinstance(value, str) and value.lower() not in ("false", ""))


# --------------------------------------------------------------------------- the rules


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


# --------------------------------------------------------------------------- putting it together


def plan_training(cfg: DictConfig, overrides: Sequence[str], *, decode: bool = True) -> tuple[TrainingPlan, DecodedStore | None]:
    """Read what the data and the backbone state, fingerprint the data, apply the rules to ``cfg``
    (in place; keys set by ``overrides`` win) and return the plan and the decoded data (or None)."""
    keys = user_keys(overrides)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    machine = Machine.here(str(cfg.device), processes)
    minutes = float(cfg.train.max_minutes) if cfg.train.max_minutes is not None else None
    plan = TrainingPlan(None, machine, minutes)
    store = None
    fmt = cfg.data.get("format") or cfg.data.get("name")
    if fmt in FINGERPRINT_FORMATS:
        choose_model(plan, machine, minutes)
        _apply(cfg, plan.settings, keys)  # the backbone is needed for what it states
    read_backbone_statements(cfg, keys, plan)
    if fmt in FINGERPRINT_FORMATS:
        wanted_cache = None if not overridden("data.cache", keys) else str(cfg.data.cache) == "ram"
        fingerprint, store = take_fingerprint(cfg.data, keys, cache=wanted_cache if decode else False,
                                              copies=machine.processes, threads=machine.cores)
        plan.fingerprint = fingerprint
        plan.notes += list(fingerprint.notes)
        crop = choose_scale_and_crop(plan, fingerprint, machine)
        batch = choose_batch(plan, fingerprint, machine)
        choose_optimization(plan, pretrained_backbone(cfg))
        choose_ema_and_validation(plan, fingerprint, machine, minutes, batch, crop, int(cfg.train.num_epochs))
        fits = store is not None if decode else fits_in_memory(fingerprint.decoded_bytes, machine.processes)
        choose_cache(plan, fingerprint, fits)
    _apply(cfg, plan.settings, keys)
    plan.settings = [s if not overridden(s.key, keys) else Setting(s.key, _plain(OmegaConf.select(cfg, s.key)), s.why, "yours")
                     for s in plan.settings]
    with open_dict(cfg):
        cfg.plan = {**plan.to_dict(), "text": plan.format()}
    return plan, store


def _apply(cfg: DictConfig, settings: Sequence[Setting], keys: set[str]) -> None:
    for setting in settings:
        if overridden(setting.key, keys):
            continue
        try:
            OmegaConf.update(cfg, setting.key, setting.value, merge=False, force_add=True)
        except Exception as e:  # a package bug, not user input
            raise EffdetsegError(f"training plan: cannot set {setting.key}={setting.value!r} ({e})") from None


def _plain(value: Any) -> Any:
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return getattr(value, "value", value)  # enums as their names
