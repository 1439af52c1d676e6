"""``effdetseg train``: set up the process group and the experiment directory, train, report.

The experiment directory belongs to the run while it writes there (a ``FolderLock``: a second run
on it is refused with one line); temporary files a killed run left are removed when it is taken.
A new run that fails before its first checkpoint removes its directory, so the same command can
run again.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig

from ..data.cache import DecodedStore
from ..errors import EffdetsegError
from ..io.files import FolderLock, remove_orphaned_temporaries
from . import experiment as exp
from .experiment import LAST
from .distributed import broadcast_object, cleanup_distributed, init_distributed
from .trainer import Trainer, TrainResult


def run_training(
    cfg: DictConfig, resume_dir: Path | None = None, command: list[str] | None = None, store: DecodedStore | None = None
) -> TrainResult | None:
    """Train as configured; on rank 0 print the best epoch's per-class table and the files written.

    ``command`` (the command line) is recorded in the checkpoints' provenance; ``store``: the data
    the training plan decoded already (the RAM cache).
    Returns the result on rank 0, None on other ranks.
    """
    ctx = init_distributed(str(cfg.device))
    lock: FolderLock | None = None
    try:
        experiment_dir, lock = _claim_experiment(cfg, resume_dir, ctx.is_main)
        # A resume refused before it writes a checkpoint (while set up, or by the time budget at the
        # start of fit) leaves config.yaml, train.log and tensorboard/ as they were.
        setup = exp.SetupWrites(experiment_dir) if resume_dir is not None and ctx.is_main else None
        try:
            trainer = Trainer(cfg, ctx, experiment_dir, resume=resume_dir is not None, command=command, store=store)
            if ctx.is_main:  # once the run is set up: a resume that is refused changes nothing
                exp.save_config(cfg, experiment_dir)
            result = trainer.fit()
        except BaseException as error:
            # Failed before its first checkpoint: leave nothing that blocks running the same command again.
            if resume_dir is None and ctx.is_main and not (experiment_dir / LAST).exists():
                shutil.rmtree(experiment_dir, ignore_errors=True)
            elif setup is not None and isinstance(error, EffdetsegError) and setup.checkpoints_unchanged():
                setup.restore()
            raise
        if result is not None:
            _report(result, trainer.log)
        return result
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed()


def _claim_experiment(cfg: DictConfig, resume_dir: Path | None, is_main: bool) -> tuple[Path, FolderLock | None]:
    """Rank 0 creates (or takes, to resume) the directory, locks it and removes a killed run's
    temporary files; every rank gets its path (or rank 0's error)."""
    payload: tuple[str, str] | None = None
    lock = None
    if is_main:
        try:
            path = resume_dir if resume_dir is not None else exp.create_experiment_dir(cfg)
            lock = FolderLock(path, "experiment").acquire()
            removed = remove_orphaned_temporaries(path)
            if removed:
                exp.Log(path, True)(f"removed {len(removed)} temporary file(s) a stopped run left: {', '.join(p.name for p in removed)}")
            payload = ("ok", str(path))
        except EffdetsegError as e:
            payload = ("error", str(e))
    payload = broadcast_object(payload)  # type: ignore[assignment]
    assert payload is not None
    status, value = payload
    if status == "error":
        raise EffdetsegError(value)
    return Path(value), lock


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
