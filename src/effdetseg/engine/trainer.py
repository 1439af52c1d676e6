"""The training loop: epochs of (accumulated, mixed-precision, clipped) steps, EMA, validation,
checkpoints, logs and plots.

One ``Trainer`` per process; under torchrun each process drives one device, gradients are
averaged by DDP, the validation confusion matrix is summed over ranks and rank 0 writes files.
What flows in: the config, read once into a ``TrainSetup`` (:mod:`.setup`); the data, model,
optimizer and scheduler it describes (:mod:`.builders`). What the loop hands on: training state
to ``Checkpoints`` (:mod:`.checkpoints`: ``last.pth``, ``best.pth``, resume), models to
``Validation`` (:mod:`.validation`: metrics, the end of the run's plots), one record per epoch to
``metrics.jsonl`` and ``train.log`` (:mod:`.experiment`).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ..data.cache import DecodedStore
from ..errors import EffdetsegError
from ..io.files import write_text_atomic
from ..pictures.charts import pyplot
from . import experiment as exp
from .budget import PhaseTimes, TimeBudget
from .builders import build_optimization, build_training_data, build_training_model, check_batch_norm_values
from .checkpoints import Best, Checkpoints, EpochPosition, EpochTally, TrainingParts
from .distributed import DistributedContext, all_reduce_mean, broadcast_floats
from .experiment import LAST
from .loaders import CoreWatch, available_cores, plan_cpu, val_loader
from .plan import PLAN_FILE
from .setup import TrainSetup, configure_determinism, seed_everything
from .validation import TrainResult, Validation

__all__ = ["Trainer", "TrainResult", "TrainingDiverged"]


class TrainingDiverged(EffdetsegError):
    """The loss became NaN or infinite."""


class Trainer:
    """One process's training run of ``cfg`` in ``experiment_dir`` (a new run, or ``resume`` from its
    ``last.pth``); ``command``: the command line the records keep; ``store``: data the training plan
    decoded already. ``fit()`` trains and returns the result (rank 0)."""

    def __init__(
        self, cfg: DictConfig, ctx: DistributedContext, experiment_dir: Path, resume: bool, command: list[str] | None = None,
        store: DecodedStore | None = None,
    ) -> None:
        self.setup = setup = TrainSetup.from_config(cfg)
        # The clock of train.max_minutes starts here: setting up (decoding the cache, building the
        # model) is part of the run's time.
        self.budget = TimeBudget(setup.max_minutes)
        self.ctx, self.device, self.dir = ctx, ctx.device, experiment_dir
        self.log = exp.Log(experiment_dir, ctx.is_main, hold=True)  # train.log is written once set up
        if setup.plan and not resume:
            self.log(str(setup.plan["text"]))
            if ctx.is_main:
                write_text_atomic(experiment_dir / PLAN_FILE, json.dumps(setup.plan, indent=1) + "\n")
        self.progress = setup.progress and ctx.is_main
        configure_determinism(setup.deterministic)
        seed_everything(setup.seed + ctx.rank)
        self.cpu = plan_cpu(self.device, setup.threads, setup.data_workers, setup.cache_in_ram, ctx.local_world_size)
        torch.set_num_threads(self.cpu.threads)
        self.core_watch = CoreWatch(available_cores(), self.cpu.threads) if self.cpu.follow_free_cores else None
        self.data = build_training_data(setup, ctx, self.cpu.threads, store, self.log)
        self.net = build_training_model(setup, ctx)
        self.model = self.net.model
        self.optim = build_optimization(setup, self.net, self.data.train, self.cpu.workers, ctx,
                                        time_budget=self.budget.enabled, resume=resume, log=self.log)
        self.optimizer, self.scheduler = self.optim.optimizer, self.optim.scheduler
        # Reading a loss value makes the host wait for the device: on CUDA only every log_every steps.
        self.check_every = 1 if self.device.type == "cpu" else max(1, setup.log_every)
        parts = TrainingParts(self.model, self.optimizer, self.scheduler, self.optim.scaler, self.net.ema, self.net.aux)
        self.checkpoints = Checkpoints(experiment_dir, ctx, parts, setup, self.data.labels, command)
        self.start_epoch = self.global_step = 0
        self.best: Best | None = None
        self.history: list[dict] = []
        self.resume_position: EpochPosition | None = None  # where in start_epoch a mid-epoch checkpoint stopped
        self.validation_s: float | None = None  # the last validation's duration (the budget's reserve)
        self.stopped_at: EpochPosition | None = None  # where the time budget ended the last epoch
        if resume:
            resumed = self.checkpoints.restore(self.budget, self.log)
            if resumed is not None:
                self.start_epoch, self.global_step, self.best = resumed.epoch, resumed.global_step, resumed.best
                self.resume_position = resumed.position
            if ctx.is_main:
                self.history = exp.read_history(self.dir, self.start_epoch)
        self.writer = None
        if ctx.is_main:  # rank 0 writes TensorBoard's events
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=self.global_step if resume else None)
        workers = self.cpu.workers if setup.validation_workers is None else setup.validation_workers
        self.validation = Validation(
            setup, ctx, self.data.val, val_loader(self.data.val, setup.validation_batch_size, workers, ctx), self.data.labels,
            self.optim.amp_dtype, experiment_dir, self.writer, self.budget, self.log,
        )
        self.log.commit()

    def _save_last(self, epoch: int, position: EpochPosition | None = None) -> None:
        self.checkpoints.save_last(epoch, self.global_step, self.best, position, self.budget.elapsed())

    # ------------------------------------------------------------------ loop

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _budget_state(self) -> tuple[float, bool]:
        """(elapsed fraction of the budget, training must stop): rank 0's clock on every rank, so all
        take the same learning rate and stop at the same step."""
        fraction, over = broadcast_floats([self.budget.fraction(), float(self.budget.training_over())], self.device)
        return fraction, bool(over)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch, or what the time budget leaves of it (``budget_over``: the budget ended it;
        ``stopped_early``: before its last batch, at ``self.stopped_at``)."""
        tally = EpochTally.starting_at(self.resume_position, self.device)
        skip = self.resume_position.batches if self.resume_position is not None else 0
        self.resume_position = None
        loader = self.optim.train_loader.epoch(epoch, skip)
        self.net.train_model.train()
        for layer in self.net.frozen:  # frozen layers keep their BatchNorm statistics too
            layer.eval()
        batches, accumulation = len(self.optim.train_loader), self.setup.accumulation
        bar = tqdm(
            enumerate(loader, start=skip), initial=skip, total=batches, desc=self._epoch_label(epoch), leave=False,
            dynamic_ncols=True, disable=None if self.progress else True,  # None: a bar on terminals only, none in logs
        )
        times = PhaseTimes()
        stopped_early, budget_over, i = False, False, skip - 1
        self.stopped_at = None
        start = time.perf_counter()
        self.budget.pause()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in bar:
            sync = (i + 1) % accumulation == 0 or i + 1 == batches
            self._forward_backward(batch, i, batches, sync, tally, times)
            if tally.trained % self.check_every == 0 or i + 1 == batches:
                mean_loss = self._check_finite(tally.loss_sum, epoch, i, batches) / (i + 1)
                times.lap("host sync")
                if self.progress:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self._lr():.2e}", refresh=False,
                                    img_s=f"{tally.images / max(time.perf_counter() - start, 1e-9):.1f}")
                    times.lap("logging")
            if sync:
                budget_over = self._optimizer_step(times)
                if budget_over or (i + 1 < batches and self.checkpoints.due(self.global_step)):
                    position = tally.position(i + 1, (i + 1) * self.optim.train_loader.batch_size * self.ctx.world_size)
                    if budget_over:
                        if i + 1 < batches:  # the run's last.pth (written by fit) keeps the position
                            stopped_early, self.stopped_at = True, position
                        break
                    self._save_last(epoch, position)
                    times.lap("checkpoint")
        if self.scheduler is not None and not self.optim.schedule.per_step and not stopped_early:
            self.scheduler.step()
        elapsed, done = time.perf_counter() - start, max(i + 1, 1)
        result: dict[str, Any] = {
            "train_loss": float(tally.loss_sum) / done, "steps": tally.trained // accumulation if tally.trained else 0,
            "images": tally.images, "images_per_s": tally.images / max(elapsed, 1e-9), "epoch_time_s": elapsed,
            "time_s": times.rounded(), "stopped_early": stopped_early, "budget_over": budget_over,
        }
        result.update({f"train_loss_{k}": float(v) / done for k, v in tally.parts_sum.items()})
        return result

    def _forward_backward(self, batch: dict, i: int, batches: int, sync: bool, tally: EpochTally, times: PhaseTimes) -> None:
        """One micro-batch: forward, loss, backward (DDP's gradient averaging only on ``sync``)."""
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        if self.setup.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        times.lap("data")
        train_model, accumulation = self.net.train_model, self.setup.accumulation
        amp_dtype = self.optim.amp_dtype
        autocast = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with train_model.no_sync() if self.ctx.is_distributed and not sync else nullcontext():
            with autocast:
                try:
                    logits = train_model(images)
                except ValueError as e:  # an augmentation made a crop smaller than the configured size
                    if "Expected more than 1 value per channel" in str(e):
                        check_batch_norm_values(self.model, self.net.batch_norm_batch, tuple(images.shape[-2:]))
                    raise
            times.lap("forward")
            loss, parts = self.optim.criterion(logits, masks)
            times.lap("loss")
            # Micro-batches of an accumulated step may differ in size (the epoch's last step).
            group = min(accumulation, batches - (i // accumulation) * accumulation)
            self.optim.scaler.scale(loss / group).backward()
            times.lap("backward")
        tally.loss_sum += loss.detach()
        for k, v in parts.items():
            tally.parts_sum[k] = tally.parts_sum.get(k, 0.0) + v
        tally.trained += 1
        tally.images += images.shape[0] * self.ctx.world_size

    def _epoch_label(self, epoch: int) -> str:
        if self.budget.enabled:
            return f"epoch {epoch + 1} ({self.budget.elapsed() / 60:.1f}/{self.budget.seconds / 60:g} min)"
        return f"epoch {epoch + 1}/{self.setup.num_epochs}"

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, i: int, batches: int) -> float:
        """The epoch's loss sum so far (one host sync; under DDP the mean over ranks, so every rank
        takes the same decision); a NaN/inf loss stops the run."""
        value = float(all_reduce_mean(loss_sum)) if self.ctx.is_distributed else float(loss_sum)
        if math.isfinite(value):
            return value
        last = self.dir / LAST
        where = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"loss is {value} at epoch {epoch + 1}, batch {i + 1}/{batches} (optimizer step {self.global_step + 1}); stopped, "
            f"{where}. Try a lower train.optimizer.lr, train.clip_grad_norm=1.0 or train.amp=false"
        )

    def _optimizer_step(self, times: PhaseTimes) -> bool:
        """Clip, step, EMA, schedule; True when the time budget says training must stop now."""
        if self.setup.clip_grad_norm:
            self.optim.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.setup.clip_grad_norm)
        self.optim.scaler.step(self.optimizer)
        self.optim.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        times.lap("optimizer")
        if self.net.ema is not None:
            self.net.ema.update(self.model, step=self.global_step)
            times.lap("EMA")
        stop = False
        if self.budget.enabled:
            self.budget.step_done()
            fraction, stop = self._budget_state()
            if self.optim.schedule.follows_time:
                self.scheduler.set_time_fraction(fraction)  # type: ignore[union-attr]
        if self.scheduler is not None and self.optim.schedule.per_step:
            self.scheduler.step()
        if self.core_watch is not None and (line := self.core_watch.check()):
            self.log(line)
        if self.writer is not None and self.global_step % max(1, self.setup.log_every) == 0:
            self.writer.add_scalar("train/lr", self._lr(), self.global_step)
        return stop

    def _reserve_finish(self) -> None:
        """Keep, under a time budget, the time the end of the run needs (rank 0's estimate on every rank)."""
        estimate = self.validation.estimate_finish_s(self.model, self.net.ema is not None, self.validation_s)
        self.budget.reserve_s = broadcast_floats([estimate], self.device)[0]

    # ------------------------------------------------------------------ run

    def fit(self) -> TrainResult | None:
        """Train to ``train.num_epochs`` (or to the end of ``train.max_minutes``), validating every
        ``validation.epoch_step`` epochs and after the last; rank 0 gets the result."""
        self._announce()
        epoch_step, epoch = self.setup.validation_epoch_step, self.start_epoch
        while self.budget.enabled or epoch < self.setup.num_epochs:
            stats = self.train_epoch(epoch)
            done = epoch if stats.pop("stopped_early") else epoch + 1  # complete epochs
            last = stats.pop("budget_over") if self.budget.enabled else done == self.setup.num_epochs
            record: dict[str, Any] = {"epoch": epoch + 1, "global_step": self.global_step, "lr": self._lr(), **stats}
            due = bool(epoch_step) and done % epoch_step == 0 and done == epoch + 1
            if due and not last and self.budget.enabled and self.budget.elapsed() + 2 * self.budget.finish_s() >= self.budget.seconds:
                last = True  # validating now would leave no time for the final validation: this is the final one
            if last or due:
                began = time.perf_counter()
                self._validate(epoch + 1, record)
                record["validation_s"] = self.validation_s = time.perf_counter() - began
                if self.budget.enabled and not last:
                    self._reserve_finish()
            self._save_last(done, self.stopped_at)
            if self.ctx.is_main:
                self.history.append(record)
                exp.append_history(self.dir, record)
                self.validation.log_epoch(record, self.best, self.global_step)
            if last:
                break
            epoch += 1
        return self.validation.end(self.model, self.history, self.best, self.global_step, self.optim.steps_per_epoch)

    def _announce(self) -> None:
        """The run's first line (a new run), and under a time budget the time kept for its end."""
        setup = self.setup
        if self.start_epoch == 0 and self.resume_position is None:
            length = (f"a time budget of {setup.max_minutes:g} minutes (train.num_epochs is not used)" if self.budget.enabled
                      else f"{setup.num_epochs} epochs")
            self.log(
                f"training {setup.model_name} on {setup.data_name}: {len(self.data.train)} train / "
                f"{len(self.data.val)} val images, {length}, {self.optim.steps_per_epoch} steps an epoch, "
                f"device {self.device}" + (f" × {self.ctx.world_size} processes" if self.ctx.is_distributed else "")
                + f"; {self.cpu.threads} thread(s), {self.optim.train_loader.loader.num_workers} data worker(s) ({self.cpu.why})"
            )
        if self.budget.enabled:
            pyplot()  # matplotlib's first import (~0.5 s) belongs to the setup, not to the reserved finish
            self._reserve_finish()
            if self.budget.training_over():
                raise EffdetsegError(
                    f"train.max_minutes={setup.max_minutes:g}: {self.budget.elapsed() / 60:.1f} minutes are used and the end "
                    f"of the run needs about {self.budget.reserve_s:.0f}s; raise train.max_minutes to train on"
                )

    def _validate(self, epoch: int, record: dict[str, Any]) -> None:
        """Validate the model (and EMA) into ``record``; better weights than the best so far become ``best.pth``."""
        candidate = self.validation.run(self.model, self.net.ema, record, self.global_step)
        if self.best is None or candidate.score > self.best.miou:
            self.best = Best(epoch, candidate.source, candidate.score, candidate.metrics.matrix.cpu())
            self.checkpoints.save_best(candidate.module, epoch, self.global_step, candidate.source, candidate.metrics)
