"""``effdetseg data check``: scan every sample of a dataset, count class pixels, list every problem."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from ..errors import EffdetsegError
from .build import build_dataset, build_label_set, data_format, dataset_splits
from .datasets import AugmentedDataset
from .transforms import build_transform
from ..io.labels import IGNORE_INDEX

# Formats whose listing can report missing files without stopping at the first one.
_OPEN_SPLIT = {
    "voc": "effdetseg.data.voc",
    "voc_aug": "effdetseg.data.voc",
    "camvid": "effdetseg.data.folder",
    "folder": "effdetseg.data.folder",
}


@dataclass
class SplitReport:
    name: str
    samples: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # count per label value
    problems: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


class _Scan(Dataset):
    """Item i: (id, label histogram or None, problem or None), so workers can do the decoding."""

    def __init__(self, dataset: AugmentedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample_id = self.dataset.sample_id(index)
        try:
            _, mask = self.dataset.load(index)
        except EffdetsegError as e:
            return sample_id, None, str(e)
        except Exception as e:  # anything unexpected about one file is still that file's problem
            return sample_id, None, f"{sample_id}: {type(e).__name__}: {e}"
        return sample_id, np.bincount(mask.ravel(), minlength=256), None


def _open(data_cfg: DictConfig, split: str) -> tuple[AugmentedDataset, list[str]]:
    """The split's dataset (only ``load`` is used: no augmentation) and the missing files found."""
    module = _OPEN_SPLIT.get(data_format(data_cfg))
    if module is not None:
        if split not in dataset_splits(data_cfg):
            raise EffdetsegError(f"split {split!r} is not defined for data={data_cfg.get('name')} (splits: {', '.join(dataset_splits(data_cfg))})")
        return importlib.import_module(module).open_split(data_cfg, split, build_transform(data_cfg, augment=False))
    return build_dataset(data_cfg, split, augment=False), []


def check_split(data_cfg: DictConfig, split: str, num_workers: int = 0, progress: bool = False) -> SplitReport:
    from tqdm import tqdm

    report = SplitReport(split)
    try:
        dataset, report.problems = _open(data_cfg, split)
    except EffdetsegError as e:
        report.problems.append(str(e))
        return report
    loader = DataLoader(_Scan(dataset), batch_size=None, num_workers=num_workers)
    for sample_id, histogram, problem in tqdm(loader, total=len(dataset), desc=f"check {split}", disable=not progress, leave=False):
        report.ids.add(sample_id)
        if problem is not None:
            report.problems.append(problem)
        else:
            report.samples += 1
            report.pixels += np.asarray(histogram, dtype=np.int64)
    return report


def check_dataset(data_cfg: DictConfig, splits: tuple[str, ...] = ("train", "val"), progress: bool = False) -> list[SplitReport]:
    """One report per split; a train/val id overlap is a problem of the val split."""
    workers = int(data_cfg.get("num_workers", 0) or 0)
    reports = [check_split(data_cfg, split, workers, progress) for split in splits]
    by_name = {r.name: r for r in reports}
    if "train" in by_name and "val" in by_name and data_format(data_cfg) != "synthetic":
        shared = sorted(by_name["train"].ids & by_name["val"].ids)
        if shared:
            by_name["val"].problems.append(f"{len(shared)} id(s) are in both train and val, e.g. {shared[:3]}")
    return reports


def format_report(data_cfg: DictConfig, reports: list[SplitReport]) -> str:
    """The human-readable summary: samples per split, per-class pixel frequencies, problems."""
    try:
        names = list(build_label_set(data_cfg).names)
    except EffdetsegError as e:
        names = [f"class_{i}" for i in range(int(data_cfg.get("num_classes") or 0))]
        reports[0].problems.append(str(e))
    lines = [f"data={data_cfg.get('name')} root={data_cfg.get('root')}"]
    for r in reports:
        lines.append(f"{r.name}: {r.samples} samples")
    header = f"{'id':>4}  {'class':<16}" + "".join(f"{r.name:>10}" for r in reports)
    lines += ["", "pixel frequency per class:", header]
    totals = [max(int(r.pixels.sum()), 1) for r in reports]
    rows = [(i, n) for i, n in enumerate(names)] + [(IGNORE_INDEX, "(ignore)")]
    for value, name in rows:
        cells = "".join(f"{100.0 * r.pixels[value] / t:>9.2f}%" for r, t in zip(reports, totals))
        lines.append(f"{value:>4}  {name:<16}{cells}")
    problems = [p for r in reports for p in r.problems]
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines += [f"  {p}" for p in problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
