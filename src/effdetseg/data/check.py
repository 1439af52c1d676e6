"""``effdetseg data check``: scan every sample of a dataset, count class pixels, list every problem."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from ..errors import EffdetsegError
from .build import build_dataset, build_label_set, data_format, dataset_splits, scan_workers
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


def label_histogram(dataset: AugmentedDataset, max_samples: int | None = None) -> np.ndarray:
    """Pixels per label value (256 counts) over the dataset's masks, or over ``max_samples`` of them
    spread evenly through it; a dataset decoded in memory is counted whole, at no decoding cost."""
    masks = getattr(dataset, "masks", None)
    if isinstance(masks, np.ndarray):  # data.cache=ram
        return np.bincount(masks, minlength=256)
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int) if count else []
    pixels = np.zeros(256, np.int64)
    for index in sorted(set(int(i) for i in indices)):
        pixels += np.bincount(dataset.load(index)[1].ravel(), minlength=256)
    return pixels


def class_pixels_per_image(dataset: AugmentedDataset, num_classes: int) -> np.ndarray:
    """(images, classes) labelled pixel counts of the dataset's untransformed masks (ignore left out).

    For class-frequency weights; masks decoded in memory (``data.cache=ram``) cost no decoding.
    """
    counts = np.zeros((len(dataset), num_classes), np.int64)
    for index in range(len(dataset)):
        counts[index] = np.bincount(dataset.load(index)[1].ravel(), minlength=256)[:num_classes]
    return counts


def coverage_problems(pixels: np.ndarray, names: list[str] | tuple[str, ...], split: str = "train") -> tuple[list[str], list[str]]:
    """(problems, warnings) about which classes a split's masks hold (``pixels``: counts per value).

    A problem: two classes, no pixel of class 1, and the ignore label present — foreground masks
    saved as 0/255, which would train on background alone. A warning: any class without pixels.
    """
    num_classes = len(names)
    missing = [c for c in range(num_classes) if pixels[c] == 0]
    total = max(int(pixels.sum()), 1)
    if num_classes == 2 and 1 in missing and pixels[IGNORE_INDEX] > 0:
        share = 100.0 * pixels[IGNORE_INDEX] / total
        return [
            f"{split}: class 1 ({names[1]}) has no pixels, while {share:.2f} % of the pixels are 255, the ignore label: "
            "if the masks are foreground masks saved as 0/255, set data.mask_format=binary (0/255 or 0/1 → classes 0/1)"
        ], []
    return [], [f"{split}: class {c} ({names[c]}) has no pixels: the model cannot learn it" for c in missing]


def check_dataset(data_cfg: DictConfig, splits: tuple[str, ...] = ("train", "val"), progress: bool = False) -> list[SplitReport]:
    """One report per split; a train/val id overlap is a problem of the val split."""
    value = data_cfg.get("num_workers", 0)
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise EffdetsegError(f"data.num_workers must be auto or an integer of at least 0, got {value!r}")
    workers = scan_workers(data_cfg)
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
    for r in reports:
        if r.name == "train" and r.samples:
            problems, warnings = coverage_problems(r.pixels, names, "train")
            r.problems += problems
            lines += [f"warning: {w}" for w in warnings]
    problems = [p for r in reports for p in r.problems]
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines += [f"  {p}" for p in problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
