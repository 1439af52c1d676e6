"""Images per second through the VOC training pipeline (decode + original augmentation list at
512×512 + normalize + collate), with DataLoader workers, looping over the real VOC sample images.

    python benchmarks/data_throughput.py                      # 2 workers, 512×512, 400 images
    python benchmarks/data_throughput.py --workers 4 --images 1000

Writes the line as ``benchmarks/results/data_throughput_<date>.json`` and ``.csv`` (date, CPU,
commit; ``--results-dir``, ``--no-results``).
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from effdetseg.data import build_dataset, collate_pad
from effdetseg.configs.compose import compose
from results_file import add_results_argument, parameters, write_results_from_args

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc2012_sample"


class Looped(Dataset):
    """``length`` items cycling over a smaller dataset."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index % len(self.dataset)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="a VOC2012-layout directory")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="training resolution (Resize in the VOC pipeline)")
    parser.add_argument("--images", type=int, default=400, help="images to time (after one warm-up batch)")
    parser.add_argument("--augmentation", default="voc_original", help="data/augmentation preset (voc_original, deeplab)")
    add_results_argument(parser)
    args = parser.parse_args()

    cfg = compose(
        [
            "data=voc",
            f"data.root={args.root}",
            f"data/augmentation={args.augmentation}",
            f"data.preprocessing.resize_height={args.size}",
            f"data.preprocessing.resize_width={args.size}",
        ]
    ).data
    train = build_dataset(cfg, "train")
    train.samples += build_dataset(cfg, "val").samples  # all sample photos, through the training pipeline
    warmup = args.batch_size * max(args.workers, 1)
    loader = DataLoader(
        Looped(train, warmup + args.images),
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=collate_pad,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None,
    )
    cpu_before = _cpu_seconds()
    seen, start = 0, None
    for batch in loader:
        seen += len(batch["id"])
        if start is None and seen >= warmup:
            start, seen = time.perf_counter(), 0  # every worker has started and delivered
    elapsed = time.perf_counter() - start
    shape = tuple(batch["image"].shape[1:])
    del loader, batch  # stop the workers so their CPU time is counted
    gc.collect()
    # CPU time per image (workers + main process, warm-up included) does not depend on what else
    # the machine runs: 1000 / cpu_ms is the rate one free core sustains.
    cpu_ms = 1000 * (_cpu_seconds() - cpu_before) / (seen + warmup)
    load = os.getloadavg()[0]
    print(
        f"data throughput: {seen / elapsed:.1f} img/s  ({seen} images of {shape} in {elapsed:.2f} s; "
        f"{len(train)} VOC sample photos looped, {args.augmentation}, batch {args.batch_size}, {args.workers} workers; "
        f"{cpu_ms:.1f} CPU ms per image; load average {load:.1f} on {os.cpu_count()} cores)"
    )
    row = {
        "images_per_s": seen / elapsed, "images": seen, "shape": "x".join(map(str, shape)), "seconds": elapsed,
        "photos": len(train), "augmentation": args.augmentation, "batch_size": args.batch_size, "workers": args.workers,
        "cpu_ms_per_image": cpu_ms, "load_average": load,
    }
    write_results_from_args(args, "data_throughput", [row], info={"argv": sys.argv[1:], **parameters(args)})


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
