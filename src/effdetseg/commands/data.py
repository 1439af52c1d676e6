"""``effdetseg data``: download, prepare or check a dataset.

    effdetseg data check data=voc data.root=/data/VOCdevkit/VOC2012
    effdetseg data plan data=folder data.root=/data/mine train.max_minutes=10
    effdetseg data prepare coco_voc data.root=/data/coco
    effdetseg data prepare voc_aug data.root=/data/VOCdevkit/VOC2012 data.sbd_root=/data/benchmark_RELEASE/dataset
    effdetseg data download voc --root /data
"""
from __future__ import annotations

import argparse
import logging

from .args import ArgumentParser

PREPARABLE = ("coco_voc", "voc_aug")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="effdetseg data", description="Download, prepare or check a dataset.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{check,plan,prepare,download}")

    check = sub.add_parser("check", help="scan a dataset: samples per split, class pixel frequencies, every problem")
    check.add_argument("overrides", nargs="*", help="data overrides, e.g. data=voc data.root=PATH")
    check.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to scan (default: train val)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")

    plan = sub.add_parser("plan", help="print the training plan `effdetseg train` would follow for these overrides, without training")
    plan.add_argument("overrides", nargs="*", help="train overrides, e.g. data=folder data.root=PATH train.max_minutes=10")

    prepare = sub.add_parser("prepare", help="build derived files once (coco_voc masks, voc_aug masks from SBD)")
    prepare.add_argument("dataset", choices=PREPARABLE)
    prepare.add_argument("overrides", nargs="*", help="data overrides, e.g. data.root=PATH")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")

    download = sub.add_parser("download", help="download an official archive, verify its checksum, extract it")
    download.add_argument("dataset", help="voc, sbd or coco")
    download.add_argument("--root", required=True, help="directory to download into and extract under")
    download.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting")
    download.add_argument("--no-extract", action="store_true", help="download and verify only")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check(args: argparse.Namespace) -> int:
    from ..configs.compose import compose
    from ..data.check import check_dataset, format_report

    data_cfg = compose(args.overrides, section="data").data
    reports = check_dataset(data_cfg, tuple(args.splits), progress=not args.no_progress)
    print(format_report(data_cfg, reports))
    return 1 if any(r.problems for r in reports) else 0


def _plan(args: argparse.Namespace) -> int:
    from ..engine.experiment import train_config
    from ..engine.plan import plan_training

    cfg, resume_dir = train_config(args.overrides)
    if resume_dir is not None:
        from ..errors import EffdetsegError

        raise EffdetsegError("resume: a resumed run follows the plan in its config.yaml; drop resume= to plan a new run")
    plan, _ = plan_training(cfg, args.overrides, decode=False)
    print(plan.format())
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from ..configs.compose import compose

    data_cfg = compose([f"data={args.dataset}", *args.overrides], section="data").data
    if args.dataset == "coco_voc":
        from ..data.coco import prepare_coco_voc

        for split, count in prepare_coco_voc(data_cfg, progress=not args.no_progress).items():
            print(f"coco_voc {split}: {count} masks in {data_cfg.splits[split].masks} under {data_cfg.root}")
    else:
        from ..data.voc import prepare_voc_aug

        out_dir = prepare_voc_aug(data_cfg)
        print(f"voc_aug: SegmentationClassAug complete in {out_dir}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from ..data.download import download_dataset

    paths = download_dataset(
        args.dataset, args.root, extract_archives=not args.no_extract, keep_archive=args.keep_archive, progress=not args.no_progress
    )
    for path in dict.fromkeys(paths):
        print(path)
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    return {"check": _check, "plan": _plan, "prepare": _prepare, "download": _download}[args.action](args)
