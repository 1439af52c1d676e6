"""``effdetseg train``: set up the process group and the experiment directory, train, report."""
from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig

from ..errors import EffdetsegError
from . import experiment as exp
from .distributed import broadcast_object, cleanup_distributed, init_distributed
from .trainer import Trainer, TrainResult


def run_training(cfg: DictConfig, resume_dir: Path | None = None, command: list[str] | None = None) -> TrainResult | None:
    """Train as configured; on rank 0 print the best epoch's per-class table and the files written.

    ``command`` (the command line) is recorded in the checkpoints' provenance.
    Returns the result on rank 0, None on other ranks.
    """
    ctx = init_distributed(str(cfg.device))
    try:
        experiment_dir = resume_dir if resume_dir is not None else _new_experiment(cfg, ctx.is_main)
        if ctx.is_main:
            exp.save_config(cfg, experiment_dir)
        try:
            trainer = Trainer(cfg, ctx, experiment_dir, resume=resume_dir is not None, command=command)
        except BaseException:
            # Nothing was trained: leave no half-made experiment that blocks reusing its name.
            if resume_dir is None and ctx.is_main:
                shutil.rmtree(experiment_dir, ignore_errors=True)
            raise
        result = trainer.fit()
        if result is not None:
            _report(result, trainer.log)
        return result
    finally:
        cleanup_distributed()


def _new_experiment(cfg: DictConfig, is_main: bool) -> Path:
    """Rank 0 creates the directory; every rank gets its path (or rank 0's error)."""
    payload: tuple[str, str] | None = None
    if is_main:
        try:
            payload = ("ok", str(exp.create_experiment_dir(cfg)))
        except EffdetsegError as e:
            payload = ("error", str(e))
    payload = broadcast_object(payload)  # type: ignore[assignment]
    assert payload is not None
    status, value = payload
    if status == "error":
        raise EffdetsegError(value)
    return Path(value)


def _report(result: TrainResult, log: exp.Log) -> None:
    source = "EMA weights" if result.best_source == "ema" else "model weights"
    log("")
    log(
        result.best_metrics.table(
            result.class_names, title=f"best validation: epoch {result.best_epoch} ({source}), dataset-level confusion matrix"
        )
    )
    log(f"mIoU {100 * result.best_metrics.miou:.2f}%")
    log(f"wrote {result.experiment_dir}/: {', '.join(result.files)}")
