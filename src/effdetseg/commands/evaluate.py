"""``effdetseg evaluate --checkpoint PATH [data overrides] [--tta flip,0.75,1.0,1.25] [--slide] [--window HxW]``.

Dataset-level mIoU of a checkpoint on a dataset's validation split: one confusion matrix over
all images (each at its original resolution), the per-class table, and a metrics JSON.
The data config is the experiment's own (config.yaml beside the checkpoint) when there is one,
else the package default; ``data.KEY=VALUE`` overrides and ``data=PRESET`` change it.
Runs under torchrun too (the matrix is summed over processes).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import EffdetsegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effdetseg evaluate",
        description="Dataset-level mIoU of a checkpoint, per-class table, optional test-time augmentation.",
        epilog="Data overrides use Hydra's grammar, e.g. data=voc data.root=PATH data.batch_size=4.",
    )
    parser.add_argument("--checkpoint", required=True, help="last.pth / best.pth / .safetensors written by effdetseg")
    parser.add_argument("--tta", default=None, help="comma list: 'flip' and/or scale factors, e.g. flip,0.75,1.0,1.25")
    parser.add_argument("--slide", action="store_true", help="sliding-window inference (windows of the training size)")
    parser.add_argument("--window", default=None, help="sliding window SIZE or HxW (implies --slide)")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a last.pth")
    parser.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (fp16 on CUDA)")
    parser.add_argument("--output", default=None, help="metrics JSON (default: eval_<checkpoint>_<data>.json beside it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_tta(text: str | None) -> tuple[bool, tuple[float, ...]]:
    """``flip,0.75,1.0,1.25`` → (True, (0.75, 1.0, 1.25)); scales default to (1.0,)."""
    if not text:
        return False, (1.0,)
    flip, scales = False, []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token.lower() in ("flip", "hflip"):
            flip = True
            continue
        try:
            scale = float(token)
        except ValueError:
            raise EffdetsegError(f"--tta: {token!r} is neither 'flip' nor a scale factor") from None
        if not 0.1 <= scale <= 8:
            raise EffdetsegError(f"--tta: scale {scale} is outside 0.1…8")
        scales.append(scale)
    return flip, tuple(scales) or (1.0,)


def parse_window(slide: bool, window: str | None, default_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The sliding window: ``--window SIZE|HxW``, or the training size with ``--slide``; None: whole images."""
    if window is None:
        if not slide:
            return None
        if default_size is None:
            raise EffdetsegError("--slide: no training size known; give the window, e.g. --window 512")
        return default_size
    try:
        parts = [int(v) for v in window.lower().split("x")]
    except ValueError:
        raise EffdetsegError(f"--window: expected SIZE or HxW, got {window!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 32:
        raise EffdetsegError(f"--window: expected SIZE or HxW of at least 32 pixels, got {window!r}")
    return (parts[0], parts[-1])


def data_config(checkpoint: Path, overrides: list[str]):
    """The ``data`` node to evaluate on (see the module doc)."""
    from omegaconf import OmegaConf

    from ..configs.compose import apply_overrides, compose_config, load_config

    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    stray = [k for k in keys if k != "data" and not k.startswith("data.")]
    if stray:
        raise EffdetsegError(f"{stray[0]}: evaluate takes data overrides only (data=PRESET, data.KEY=VALUE)")
    sibling = checkpoint.parent / "config.yaml"
    if sibling.is_file() and "data" not in keys:
        cfg = load_config(sibling)
        if "data" not in cfg:
            raise EffdetsegError(f"{sibling}: has no data section")
        cfg = OmegaConf.create({"data": cfg.data})
        apply_overrides(cfg, overrides, where=str(sibling))
        return cfg.data, str(sibling)
    return compose_config(overrides).data, "configs/data"


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    flip, scales = parse_tta(args.tta)
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise EffdetsegError(f"--checkpoint: {checkpoint} not found")

    import torch
    from omegaconf import open_dict

    from ..io.record import load_model
    from ..data import build_dataset, build_label_set
    from ..engine.distributed import cleanup_distributed, init_distributed
    from ..engine.evaluate import evaluate
    from ..engine.loaders import val_loader

    data_cfg, data_source = data_config(checkpoint, overrides)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise EffdetsegError("--batch-size must be at least 1")
        with open_dict(data_cfg):
            data_cfg.batch_size = args.batch_size
    ctx = init_distributed(args.device)
    try:
        model = load_model(checkpoint, map_location=ctx.device)
        stored = _stored_metadata(checkpoint)
        if args.ema:
            if not isinstance(stored.get("ema"), dict):
                raise EffdetsegError(f"--ema: {checkpoint} holds no EMA weights (only a last.pth of an EMA run does)")
            model.load_state_dict(stored["ema"])
        labels = build_label_set(data_cfg)
        if model.num_classes != labels.num_classes:
            raise EffdetsegError(
                f"{checkpoint}: the model predicts {model.num_classes} classes but data {data_cfg.name} has {labels.num_classes}"
            )
        size = stored.get("input_size")
        prep = data_cfg.get("preprocessing") or {}
        if size is None and prep.get("resize_height") and prep.get("resize_width"):
            size = [prep.resize_height, prep.resize_width]
        slide = parse_window(args.slide, args.window, tuple(int(v) for v in size) if size else None)
        if stored.get("normalize") and ctx.is_main:
            mean, std = list(data_cfg.normalize.mean), list(data_cfg.normalize.std)
            if [round(v, 6) for v in stored["normalize"]["mean"]] != [round(float(v), 6) for v in mean] or [
                round(v, 6) for v in stored["normalize"]["std"]
            ] != [round(float(v), 6) for v in std]:
                print(
                    f"warning: the checkpoint was trained with normalize {stored['normalize']} but data.normalize is "
                    f"mean={mean} std={std}"
                )

        dataset = build_dataset(data_cfg, "val")
        loader = val_loader(dataset, int(data_cfg.batch_size), int(data_cfg.num_workers), ctx)
        amp_dtype = (torch.float16 if ctx.device.type == "cuda" else torch.bfloat16) if args.amp else None
        start = time.perf_counter()
        matrix = evaluate(
            model, loader, labels.num_classes, ctx.device,
            ignore_index=int(data_cfg.ignore_index), flip=flip, scales=scales, slide=slide,
            amp_dtype=amp_dtype, progress=ctx.is_main and not args.no_progress, description="evaluate",
        )
        seconds = time.perf_counter() - start
        if not ctx.is_main:
            return 0
        metrics = matrix.compute()
        tta_text = ", ".join((["flip"] if flip else []) + [f"×{s:g}" for s in scales])
        title = f"{checkpoint} on {data_cfg.name} val ({len(dataset)} images; TTA {tta_text}" + (
            f"; sliding window {slide[0]}×{slide[1]})" if slide else ")"
        )
        print(metrics.table(labels.names, title=title))
        print(f"mIoU {100 * metrics.miou:.2f}%")
        output = Path(args.output) if args.output else checkpoint.parent / f"eval_{checkpoint.stem}_{data_cfg.name}.json"
        report = {
            "checkpoint": str(checkpoint),
            "weights": "ema" if args.ema else "model",
            "data": str(data_cfg.name),
            "data_config": data_source,
            "split": "val",
            "images": len(dataset),
            "tta": {"flip": flip, "scales": list(scales)},
            "slide": list(slide) if slide else None,
            "seconds": round(seconds, 2),
            **metrics.to_dict(labels.names, with_matrix=True),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {output}")
        return 0
    finally:
        cleanup_distributed()


def _stored_metadata(checkpoint: Path) -> dict:
    """input_size / normalize / ema of an effdetseg torch checkpoint ({} for other files)."""
    if checkpoint.suffix == ".safetensors":
        return {}
    import torch

    obj = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return obj if isinstance(obj, dict) else {}
