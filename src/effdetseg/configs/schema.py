"""The config's schema: OmegaConf structured configs (typed dataclasses) under the YAML tree.

``configs/train.yaml`` and the ``data`` presets hold the values and their documentation; these
dataclasses hold the keys and their types. The composed tree is merged onto the schema of its
data format, so OmegaConf itself rejects an unknown key or a value of the wrong type, naming the
key. Fields default to ``MISSING`` where every YAML sets them; the few with a real default here
are keys that configs written by effdetseg 0.1.0 (experiments to resume or evaluate) lack.

Open nodes (typed ``dict``) — the ``_target_`` nodes (optimizer, scheduler, loss terms: their keys
are the target's keyword arguments, checked by its constructor), ``train.model.overrides``,
``data.splits``, ``data.label_map`` — take new keys without ``+``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from ..io.record import ResizeMode

# _target_ nodes, and the keyword arguments every target of that kind takes: when an override
# changes a node's _target_, the node starts over with these keys kept and the old target's own
# keys dropped (docs/guide/train.md, "Objects from the config").
TARGET_NODES: dict[str, tuple[str, ...]] = {
    "train.optimizer": ("lr", "weight_decay"),
    "train.scheduler": (),
    "train.loss.distribution": ("ignore_index", "weight"),
    "train.loss.region": ("ignore_index",),
}


class AmpDtype(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"


class MaskFormat(str, Enum):
    ids = "ids"
    binary = "binary"
    color = "color"


@dataclass
class ModelConfig:
    name: str = MISSING
    num_classes: int = MISSING
    backbone: Optional[str] = None
    backbone_pretrained: Any = False  # auto (timm's ImageNet weights, fetched before the run), true, false, or a local weights file
    weights: Optional[str] = None
    optimizer_state: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmaConfig:
    enabled: bool = MISSING
    decay: float = MISSING
    warmup: bool = MISSING


@dataclass
class AuxHeadsConfig:
    levels: list[int] = field(default_factory=list)  # pyramid levels with a training-only classifier, e.g. [3, 4, 5]; [] = off
    weight: float = 0.4  # of their summed losses


@dataclass
class LossConfig:
    accumulation_iter: int = MISSING
    distribution: Optional[dict[str, Any]] = None
    distribution_weight: float = 1.0
    region: Optional[dict[str, Any]] = None
    region_weight: float = 1.0
    class_weights: Any = None  # null, a list of per-class weights, or median_frequency (from the training masks)


class CacheMode(str, Enum):
    none = "none"
    ram = "ram"


@dataclass
class TrainSection:
    amp: bool = MISSING
    amp_dtype: AmpDtype = AmpDtype.auto
    num_epochs: int = MISSING
    max_minutes: Optional[float] = None  # a time budget for the whole run (train.num_epochs is then not used)
    threads: Any = "auto"  # compute threads of each process: auto or a number
    clip_grad_norm: Optional[float] = None
    channels_last: bool = False
    compile: bool = False
    decoder_lr_scale: float = 1.0  # lr multiplier for all but the backbone (a new decoder on a pretrained backbone)
    freeze_backbone_stride: int = 0  # keep the backbone's layers up to its stride-N output fixed (0: train all)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    sync_batchnorm: bool = True
    log_every: int = 10
    progress: bool = True
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: Optional[dict[str, Any]] = None
    ema: EmaConfig = field(default_factory=EmaConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    aux_heads: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)


@dataclass
class ValidationSection:
    epoch_step: int = MISSING  # 0: only after the last step
    batch_size: int = MISSING
    num_workers: Any = MISSING  # auto (as data.num_workers chooses) or a number
    grid_images: int = 6


@dataclass
class SplitConfig:
    list: Optional[str] = None
    images: Optional[str] = None
    masks: Optional[str] = None
    annotations: Optional[str] = None  # COCO


@dataclass
class ImageSizeConfig:
    resize_height: int = MISSING
    resize_width: int = MISSING
    resize_mask_height: int = MISSING
    resize_mask_width: int = MISSING
    inference_size: Optional[int] = None  # the side (fixed) or long side (keep_aspect) images get for inference; null: the training size


@dataclass
class NormalizeConfig:
    mean: list[float] = MISSING
    std: list[float] = MISSING


@dataclass
class AugmentationConfig:
    train: list[Any] = field(default_factory=list)  # albumentations transforms: {_target_: albumentations.X, …}
    val: list[Any] = field(default_factory=list)
    # How images are resized for inference (predict, evaluate, validation) after this training:
    # fixed = to the training size; keep_aspect; original = no resizing. 0.1.0 validated at the
    # original size, hence the default for its experiments.
    inference_resize: ResizeMode = ResizeMode.original


@dataclass
class DataConfig:
    name: str = MISSING
    format: Optional[str] = None  # the reader; null: the preset's name
    root: Optional[str] = None
    num_classes: int = MISSING
    ignore_index: int = 255
    labels: Optional[str] = None
    batch_size: int = MISSING
    num_workers: Any = MISSING  # auto (chosen with train.threads for this machine) or a number
    cache: CacheMode = CacheMode.none  # ram: images and masks decoded once and kept in memory
    max_image_pixels: Optional[int] = None  # images over this many pixels are refused; null: PIL's limit, 0: none
    splits: dict[str, Optional[SplitConfig]] = field(default_factory=dict)
    preprocessing: ImageSizeConfig = field(default_factory=ImageSizeConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class SyntheticData(DataConfig):
    shapes: list[str] = MISSING
    train_samples: int = MISSING
    val_samples: int = MISSING
    seed: int = 0
    val_seed: int = 1
    objects_per_image: list[int] = MISSING
    radius_range: list[float] = MISSING
    max_rotation: float = 180.0


@dataclass
class VocData(DataConfig):
    pass


@dataclass
class VocAugData(VocData):
    sbd_root: Optional[str] = None
    voc_masks: str = "SegmentationClass"


@dataclass
class CocoVocData(DataConfig):
    min_labelled_pixels: int = 1000


@dataclass
class FolderData(DataConfig):
    mask_format: MaskFormat = MaskFormat.ids
    label_map: Optional[dict[int, int]] = None
    val_fraction: Optional[float] = None
    split_seed: int = 0


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "synthetic": SyntheticData,
    "voc": VocData,
    "voc_aug": VocAugData,
    "coco_voc": CocoVocData,
    "camvid": FolderData,
    "folder": FolderData,
}


@dataclass
class TrainConfig:
    experiment_name: Optional[str] = None
    experiments_dir: str = "experiments"
    resume: Optional[str] = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    train: TrainSection = field(default_factory=TrainSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    data: Any = None  # one of DATA_SCHEMAS, by data.format
    plan: Any = None  # the training plan this run was given (engine/plan/): a record, never read back as settings


def schema(data_format: str) -> DictConfig:
    """The typed, empty tree for a data format (an unknown format is the caller's error to report).

    Dataclass nodes reject unknown keys; ``dict`` nodes (the open ones) take any key.
    """
    return OmegaConf.structured(TrainConfig(data=DATA_SCHEMAS[data_format]()))
