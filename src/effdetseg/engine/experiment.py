"""The experiment directory: its name, its files, and the log that goes both to screen and disk.

``experiments/<experiment_name>/`` holds config.yaml (resolved), last.pth, best.pth,
metrics.jsonl (one JSON line per epoch), train.log, tensorboard/ and the plots. A new run never
writes into an existing directory; ``resume=`` is the only way back into one, with the experiment's
own config.yaml as the base of the config (``train_config``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..configs.compose import compose
from ..errors import EffdetsegError
from ..io.files import atomic_write, write_error, write_text_atomic
from .loaders import check_counts

CONFIG = "config.yaml"
LAST = "last.pth"  # the training state: weights, optimizer, schedule, position (resume=)
BEST = "best.pth"  # the best validated weights and their record
METRICS = "metrics.jsonl"
LOG = "train.log"
TENSORBOARD = "tensorboard"
MAX_MINUTES = 366 * 24 * 60  # train.max_minutes: a larger budget is a typo (1e308 would overflow to infinity)


def create_experiment_dir(cfg: DictConfig) -> Path:
    """Make a fresh ``experiments_dir/experiment_name`` (a timestamped default name when null)."""
    root = Path(str(cfg.experiments_dir)).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        cause = "it is not a folder" if root.exists() else e.strerror
        raise EffdetsegError(f"experiments_dir: cannot create {root} ({cause})") from None
    if cfg.experiment_name:
        name = str(cfg.experiment_name)
        if "/" in name or name in (".", ".."):
            raise EffdetsegError(f"experiment_name: {name!r} must be a plain directory name")
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            raise EffdetsegError(
                f"experiment_name: {path} already exists; choose another name, or continue it with resume={path}"
            ) from None
        except OSError as e:
            raise EffdetsegError(f"experiment_name: cannot create {path} ({e.strerror})") from None
        return path
    stem = f"{cfg.train.model.name}_{cfg.data.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
        try:
            (root / (stem + suffix)).mkdir()
            return root / (stem + suffix)
        except FileExistsError:
            continue
        except OSError as e:
            raise EffdetsegError(f"experiments_dir: cannot create a directory in {root} ({e.strerror})") from None
    raise EffdetsegError(f"experiments_dir: could not create a new directory for {stem} in {root}")


def resolve_resume_dir(resume: str) -> Path:
    """``resume=experiments/NAME`` (or its last.pth) → the experiment directory."""
    path = Path(resume).expanduser()
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise EffdetsegError(f"resume: {path} is not an experiment directory")
    if not (path / CONFIG).is_file():
        raise EffdetsegError(f"resume: {path} has no {CONFIG}; it is not an effdetseg experiment")
    return path


def save_config(cfg: DictConfig, experiment_dir: Path) -> None:
    write_text_atomic(experiment_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def read_history(experiment_dir: Path, up_to_epoch: int) -> list[dict]:
    """Epoch records of metrics.jsonl up to ``up_to_epoch`` (epochs a killed run logged after its
    last checkpoint are trained again).

    The file is not rewritten here: a resume that is refused after reading it (its time budget is
    spent, its config builds another network) must leave the run's records as they are. The later
    records are dropped when the resumed run appends its first one (``append_history``)."""
    path = experiment_dir / METRICS
    _pending.pop(_key(path), None)
    if not path.is_file():
        return []
    text = path.read_text()
    history = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("epoch", 0) <= up_to_epoch:
            history.append(record)
    if _history_text(history) != text:
        _pending[_key(path)] = history
    return history


# metrics.jsonl files whose later records a resumed run drops with its first append: path → the records kept
_pending: dict[str, list[dict]] = {}


def _key(path: Path) -> str:
    return str(Path(path).resolve())


def _history_text(history: Sequence[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in history)


def write_history(experiment_dir: Path, history: Sequence[dict]) -> None:
    _pending.pop(_key(experiment_dir / METRICS), None)
    write_text_atomic(experiment_dir / METRICS, _history_text(history))


def append_history(experiment_dir: Path, record: dict) -> None:
    """Add one epoch's record; the first of a resumed run also drops the records after its checkpoint."""
    kept = _pending.pop(_key(experiment_dir / METRICS), None)
    if kept is not None:
        write_history(experiment_dir, [*kept, record])
    else:
        append_line(experiment_dir / METRICS, json.dumps(record))


def append_line(path: Path, line: str) -> None:
    """Append one line to a log file; a failed write (a full disk) is one error naming the file."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise write_error(path, e) from None


class Log:
    """Print on rank 0 and append to train.log in the experiment directory.

    With ``hold=True`` the lines are printed at once but reach train.log only at ``commit()``: a run
    refused while it is being set up (e.g. ``resume=`` of another network) leaves its folder as it was.
    """

    def __init__(self, experiment_dir: Path | None, enabled: bool, hold: bool = False) -> None:
        self.path = experiment_dir / LOG if experiment_dir is not None else None
        self.enabled = enabled
        self.held: list[str] | None = [] if hold else None

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(message)
        if self.held is not None:
            self.held.append(message)
        elif self.path is not None:
            append_line(self.path, message)

    def commit(self) -> None:
        """Write the held lines; later lines go straight to train.log."""
        held, self.held = self.held or [], None
        if self.enabled and self.path is not None and held:
            append_line(self.path, "\n".join(held))


class SetupWrites:
    """What a resumed run writes while it sets up — config.yaml, lines of train.log, a tensorboard
    event file — recorded as it was before, and put back by ``restore`` when the run is refused
    before it wrote a checkpoint (a spent time budget, a config of another network): a refused
    resume changes nothing in the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        config = folder / CONFIG
        self.config = config.read_bytes() if config.is_file() else None
        log = folder / LOG
        self.log_size = log.stat().st_size if log.is_file() else None
        self.tensorboard_existed = (folder / TENSORBOARD).is_dir()
        self.tensorboard = set(_files_below(folder / TENSORBOARD))
        self.checkpoints = self._checkpoint_stamps()

    def _checkpoint_stamps(self) -> dict[str, tuple[int, int, int] | None]:
        stamps: dict[str, tuple[int, int, int] | None] = {}
        for name in (LAST, BEST):
            try:
                stat = (self.folder / name).stat()
                stamps[name] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                stamps[name] = None
        return stamps

    def checkpoints_unchanged(self) -> bool:
        return self._checkpoint_stamps() == self.checkpoints

    def restore(self) -> None:
        config = self.folder / CONFIG
        if self.config is not None and (not config.is_file() or config.read_bytes() != self.config):
            data = self.config
            atomic_write(config, lambda tmp: Path(tmp).write_bytes(data))
        log = self.folder / LOG
        if self.log_size is None:
            log.unlink(missing_ok=True)
        elif log.is_file() and log.stat().st_size > self.log_size:
            os.truncate(log, self.log_size)
        for path in _files_below(self.folder / TENSORBOARD):
            if path not in self.tensorboard:
                path.unlink(missing_ok=True)
        if not self.tensorboard_existed:
            shutil.rmtree(self.folder / TENSORBOARD, ignore_errors=True)


def _files_below(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def train_config(overrides: Sequence[str]) -> tuple[DictConfig, Path | None]:
    """The config of ``effdetseg train OVERRIDES`` and the experiment to resume (or None).

    With ``resume=experiments/NAME`` the experiment's own config.yaml is the base (its data and
    model are fixed); the other overrides apply on top, e.g. ``train.num_epochs=40`` to go on longer.
    """
    resume_value, others = None, []
    for text in overrides:
        key, _, value = text.partition("=")
        if key.lstrip("+") == "resume":
            resume_value = value
        else:
            others.append(text)
    if resume_value and resume_value.lower() not in ("null", "none"):
        experiment_dir = resolve_resume_dir(resume_value)
        cfg = compose(others, base=experiment_dir / CONFIG)
        cfg.resume = str(experiment_dir)
        check_train_config(cfg)
        return cfg, experiment_dir
    cfg = compose(others)
    check_train_config(cfg)
    return cfg, None


def check_train_config(cfg: DictConfig) -> None:
    """Ranges and consistency the types cannot say (the schema has checked the types), before
    anything is built or written: each bad value is one error line naming its key."""
    _check_finite_numbers(cfg, "")
    positive = ("train.num_epochs", "train.loss.accumulation_iter", "data.batch_size",
                "validation.batch_size", "train.model.num_classes")
    for key in positive:
        if OmegaConf.select(cfg, key) < 1:
            raise EffdetsegError(f"{key} must be a positive integer, got {OmegaConf.select(cfg, key)}")
    for key in ("validation.epoch_step", "train.checkpoint_every_steps", "train.checkpoint_every_minutes"):
        if OmegaConf.select(cfg, key) < 0:
            raise EffdetsegError(f"{key} must not be negative, got {OmegaConf.select(cfg, key)}")
    for key, least in (("data.num_workers", 0), ("validation.num_workers", 0), ("train.threads", 1)):
        value = OmegaConf.select(cfg, key)
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise EffdetsegError(f"{key} must be auto or an integer of at least {least}, got {value!r}")
    check_counts(cfg.train.threads, cfg.data.num_workers)
    for key in ("train.clip_grad_norm", "train.max_minutes"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value <= 0:
            raise EffdetsegError(f"{key} must be a positive number or null, got {value}")
    if cfg.train.max_minutes is not None and cfg.train.max_minutes > MAX_MINUTES:
        raise EffdetsegError(f"train.max_minutes={cfg.train.max_minutes:g} is more than a year ({MAX_MINUTES} minutes); "
                             "for no time limit use train.max_minutes=null")
    if cfg.train.decoder_lr_scale <= 0:
        raise EffdetsegError(f"train.decoder_lr_scale must be positive (the decoder's lr = lr × this), got {cfg.train.decoder_lr_scale}")
    if cfg.train.freeze_backbone_stride not in (0, 2, 4, 8, 16, 32):
        raise EffdetsegError(f"train.freeze_backbone_stride must be 0 (train all), 2, 4, 8, 16 or 32, got {cfg.train.freeze_backbone_stride}")
    lr = cfg.train.optimizer.get("lr")
    if isinstance(lr, (int, float)) and lr <= 0:
        raise EffdetsegError(f"train.optimizer.lr must be positive, got {lr}")
    if cfg.train.ema.enabled and not 0.0 < cfg.train.ema.decay < 1.0:
        raise EffdetsegError(f"train.ema.decay must be between 0 and 1, got {cfg.train.ema.decay}")
    if cfg.train.model.num_classes != cfg.data.num_classes:
        raise EffdetsegError(
            f"train.model.num_classes ({cfg.train.model.num_classes}) differs from data.num_classes ({cfg.data.num_classes})"
        )
    if not cfg.train.optimizer or "_target_" not in cfg.train.optimizer:
        raise EffdetsegError("train.optimizer needs a _target_ (e.g. torch.optim.AdamW)")


def _check_finite_numbers(value: object, key: str) -> None:
    """No NaN or infinity anywhere in the config (a NaN learning rate would train on NaN weights)."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite_numbers(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite_numbers(item, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise EffdetsegError(f"{key}: {value} is not a finite number")
