"""Validation during training and the end of a run.

Validation runs a prepared copy of the model (``prepare_for_inference``: BatchNorm folded) through
the one inference path with the record's preprocessing, so it measures what ``predict`` and
``evaluate`` will output for the checkpoint it writes; under DDP each rank validates its shard and
the confusion matrix is summed over ranks. The model and, when ``train.ema`` is on, its EMA copy
are validated; the better of the two is the candidate for ``best.pth``.

The end of a run — the last validation, checkpoints, ``curves.png``, ``per_class_iou.png`` and
``val_grid.png`` — has its cost estimated before training (``estimate_finish_s``), so a time budget
(``train.max_minutes``) keeps room for it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import EffdetsegError
from ..inference.prepare import prepare_for_inference
from ..inference.segment import segment
from ..io.labels import LabelSet
from ..io.model_files import read_model_file
from . import experiment as exp
from . import plots
from .budget import TimeBudget
from .checkpoints import Best
from .distributed import DistributedContext, broadcast_buffers
from .evaluate import evaluate
from .experiment import BEST, LAST
from .metrics import SegmentationMetrics
from .setup import TrainSetup


@dataclass
class TrainResult:
    """What a run reports on rank 0: its folder, the best validation (epoch, weights, metrics), the
    class names and the files it wrote."""

    experiment_dir: Path
    best_epoch: int
    best_source: str
    best_metrics: SegmentationMetrics
    class_names: tuple[str, ...]
    files: list[str]


@dataclass(frozen=True)
class Candidate:
    """Validated weights: ``source`` (``model`` or ``ema``), the module and its metrics."""

    source: str
    module: nn.Module
    metrics: SegmentationMetrics

    @property
    def score(self) -> float:
        """mIoU, −1 when no pixel was labelled (NaN), so that it never wins over a measured one."""
        return -1.0 if math.isnan(self.metrics.miou) else self.metrics.miou


class Validation:
    """Validation of one run: ``val_set`` (uint8 images: the inference path normalizes them) through
    ``loader`` (this rank's shard), at the training precision ``amp_dtype``; scalars go to ``writer``
    (TensorBoard, rank 0), lines to ``log`` and files to ``directory``; ``budget``: the run's clock."""

    def __init__(
        self, setup: TrainSetup, ctx: DistributedContext, val_set: Dataset, loader: DataLoader, labels: LabelSet,
        amp_dtype: torch.dtype | None, directory: Path, writer: Any | None, budget: TimeBudget, log: Callable[[str], None],
    ) -> None:
        self.setup = setup
        self.ctx = ctx
        self.device = ctx.device
        self.val_set = val_set
        self.loader = loader
        self.labels = labels
        self.amp_dtype = amp_dtype
        self.dir = directory
        self.writer = writer
        self.budget = budget
        self.log = log
        self.progress = setup.progress and ctx.is_main

    def metrics(self, module: nn.Module, name: str) -> SegmentationMetrics:
        """Metrics of ``module`` on the validation set, through the inference path of ``predict``;
        a prepared copy runs (the module being trained is not changed)."""
        matrix = evaluate(
            prepare_for_inference(module, self.device),
            self.loader,
            self.setup.num_classes,
            self.setup.preprocessing,
            ignore_index=self.setup.ignore_index,
            amp_dtype=self.amp_dtype,
            progress=self.progress,
            description=f"validate ({name})",
        )
        return matrix.compute()

    def run(self, model: nn.Module, ema: ModelEmaV3 | None, record: dict[str, Any], global_step: int) -> Candidate:
        """Validate the model and its EMA copy; their metrics go into the epoch's ``record``
        (``val``, ``val_ema``) and TensorBoard; the better of the two is returned."""
        names = self.labels.names
        broadcast_buffers(model)
        if ema is not None:
            broadcast_buffers(ema.module)
        candidates = [Candidate("model", model, self.metrics(model, "model"))]
        if ema is not None:
            candidates.append(Candidate("ema", ema.module, self.metrics(ema.module, "EMA")))
        for candidate in candidates:
            record["val" if candidate.source == "model" else "val_ema"] = candidate.metrics.to_dict(names)
        if self.writer is not None:
            for candidate in candidates:
                self.writer.add_scalar(f"val/miou_{candidate.source}", candidate.metrics.miou, global_step)
                self.writer.add_scalar(f"val/pixel_accuracy_{candidate.source}", candidate.metrics.pixel_accuracy, global_step)
            for name, iou in zip(names, candidates[0].metrics.iou):  # per class: the model's
                if not math.isnan(iou):
                    self.writer.add_scalar(f"val_class_iou/{name}", iou, global_step)
        return max(candidates, key=lambda c: c.score)

    def estimate_finish_s(self, model: nn.Module, with_ema: bool, last_validation_s: float | None) -> float:
        """Seconds the end of the run needs after its last step — validation of the model (and
        EMA), checkpoints, plots — from the last validation's duration, or before any from a timed
        pass over one validation image, with a margin."""
        validations = 2 if with_ema else 1
        grid = min(self.setup.grid_images, len(self.val_set))
        shard = math.ceil(len(self.val_set) / self.ctx.world_size)
        if last_validation_s is not None:
            per_image = last_validation_s / max(1, validations * shard)
        else:
            prepared = prepare_for_inference(model, self.device)
            image = self.val_set[0]["image"]
            for _ in range(2):  # the second pass: the first also builds the kernels
                begin = time.perf_counter()
                segment(prepared, [image], self.setup.preprocessing, amp_dtype=self.amp_dtype)
                per_image = time.perf_counter() - begin
        images = validations * shard + grid
        return 1.25 * per_image * images + 5.0  # + checkpoints and plots

    def log_epoch(self, record: dict[str, Any], best: Best | None, global_step: int) -> None:
        """The epoch's line in train.log and its training scalars in TensorBoard."""
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", record["train_loss"], global_step)
            self.writer.add_scalar("train/images_per_s", record["images_per_s"], global_step)
        of = "" if self.budget.enabled else f"/{self.setup.num_epochs}"
        text = (
            f"epoch {record['epoch']:>3}{of}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['images_per_s']:.1f} img/s  {record['epoch_time_s']:.0f}s"
        )
        if record.get("val"):
            text += f"  val mIoU {pct(record['val']['miou'])}"
        if record.get("val_ema"):
            text += f"  EMA {pct(record['val_ema']['miou'])}"
        if best is not None:
            text += f"  best {pct(best.miou)} (epoch {best.epoch}, {best.source})"
        self.log(text)

    def end(self, model: nn.Module, history: list[dict], best: Best | None, global_step: int, steps_per_epoch: int) -> TrainResult | None:
        """Close TensorBoard; on rank 0 the plots and prediction grid of the best weights (loaded
        into ``model``), and the result."""
        if self.writer is not None:
            self.writer.close()
        minutes = self.setup.max_minutes
        if self.budget.enabled:
            self.log(f"the {minutes:g}-minute budget gave {global_step} optimizer steps "
                     f"({global_step / max(1, steps_per_epoch):.1f} epochs)")
        if not self.ctx.is_main:
            return None
        if best is None:
            raise EffdetsegError("no validation ran: nothing to report")
        best_metrics = SegmentationMetrics.from_matrix(best.matrix)
        began = time.perf_counter()
        files = self.finish(model, history, best, best_metrics)
        if self.budget.enabled:
            self.log(f"finished after {self.budget.elapsed() / 60:.2f} of {minutes:g} minutes (plots and the prediction "
                     f"grid: {time.perf_counter() - began:.1f}s; reserved for the end: {self.budget.reserve_s:.0f}s)")
        return TrainResult(self.dir, best.epoch, best.source, best_metrics, tuple(self.labels.names), files)

    def finish(self, model: nn.Module, history: list[dict], best: Best, best_metrics: SegmentationMetrics) -> list[str]:
        """Plots from the history and the best weights (loaded into ``model``); the files written."""
        plots.plot_curves(history, self.dir / "curves.png")
        plots.plot_class_iou(
            self.labels.names, best_metrics.iou, self.labels.colors, self.dir / "per_class_iou.png",
            f"per-class IoU, best epoch {best.epoch} ({best.source}): mIoU {pct(best_metrics.miou)}",
        )
        model.load_state_dict(read_model_file(self.dir / BEST).state_dict)
        self.prediction_grid(model, self.dir / "val_grid.png")
        return ["config.yaml", LAST, BEST, exp.METRICS, exp.LOG, "tensorboard/", "curves.png", "per_class_iou.png", "val_grid.png"]

    def prediction_grid(self, module: nn.Module, path: Path) -> None:
        """The first ``validation.grid_images`` validation images: image, mask and prediction."""
        count = min(self.setup.grid_images, len(self.val_set))
        if count <= 0:
            return
        items = [self.val_set[index] for index in range(count)]
        results = segment(prepare_for_inference(module, self.device), [item["image"] for item in items], self.setup.preprocessing)
        plots.plot_prediction_grid(
            [item["image"].permute(1, 2, 0).numpy() for item in items],
            [item["mask"].numpy() for item in items],
            [result.labels.cpu().numpy() for result in results],
            [str(item["id"]) for item in items],
            self.labels,
            path,
        )


def pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
