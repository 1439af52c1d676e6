"""``effdetseg evaluate --checkpoint PATH [--split NAME] [--original-size] [--tta …] [--slide] [data overrides]``.

Dataset-level mIoU of a checkpoint on one split (default: val): one confusion matrix over all
images, the per-class table, and a metrics JSON. Each image goes through the inference path of
``predict`` with the checkpoint's record — its preprocessing (training size and resize mode, mean,
std) — so the numbers describe what ``predict`` outputs; ``--original-size`` feeds every image at
its own size instead. The data config is the experiment's own config.yaml when it lies beside the
checkpoint, else the package preset the record names (else the default); ``data=PRESET`` and
``data.KEY=VALUE`` change it. Runs under torchrun too (the matrix is summed over processes).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from ..errors import EffdetsegError
from .args import ArgumentParser, add_backend, add_device, add_tta, parse_tta, positive, tta_from_args


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="effdetseg evaluate",
        description="Dataset-level mIoU of a checkpoint as predict runs it, per-class table, optional test-time augmentation.",
        epilog="Data overrides use Hydra's grammar, e.g. data=voc data.root=PATH data.batch_size=4; "
        "allow_targets=[my.module.Class] trusts a _target_ of the experiment's config.yaml beyond the built-in allowlist.",
    )
    parser.add_argument(
        "--checkpoint", required=True,
        help="last.pth / best.pth / .safetensors written by effdetseg, a model folder (export --format hub), "
        "or a file of effdetseg export (.onnx, an OpenVINO IR folder)",
    )
    parser.add_argument("--split", default="val", help="the split to evaluate: train, val, test or any the preset defines (default: val)")
    parser.add_argument(
        "--original-size", action="store_true",
        help="feed each image at its own size instead of the checkpoint's preprocessing (what predict does)",
    )
    add_tta(parser)
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a last.pth")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None, help="default: data.batch_size")
    add_device(parser)
    add_backend(parser)
    parser.add_argument("--amp", action="store_true", help="autocast: bf16 on the CPU (slow without native bf16), fp16 on CUDA")
    parser.add_argument("--output", "--output_name", default=None, help="metrics JSON (default: eval_<checkpoint>_<data>[_<split>].json beside it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def data_config(checkpoint: Path, record_data: str | None, overrides: list[str]):
    """The config to evaluate on and where it came from (see the module doc)."""
    from ..configs.compose import compose

    sibling = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "config.yaml"
    chooses_preset = any(o.partition("=")[0].lstrip("+") == "data" for o in overrides)
    if sibling.is_file() and not chooses_preset:
        return compose(overrides, base=sibling, section="data"), str(sibling)
    if record_data and not chooses_preset:
        from ..configs.compose import group_options

        if record_data in group_options()["data"]:
            return compose([f"data={record_data}", *overrides], section="data"), f"configs/data/{record_data}.yaml"
    return compose(overrides, section="data"), "configs/data"


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    parse_tta(args.tta)
    positive("--batch-size", args.batch_size)
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.exists():
        raise EffdetsegError(f"--checkpoint: {checkpoint} not found")

    import torch

    from ..data import build_dataset, build_label_set
    from ..devices import slow_bf16_warning
    from ..engine.distributed import cleanup_distributed, init_distributed
    from ..engine.evaluate import evaluate
    from ..engine.loaders import plan_cpu, val_loader
    from ..inference.predictor import check_segmentation
    from ..inference.prepare import prepare_for_inference
    from ..io.build import model_from_file
    from ..io.files import check_replaceable, ensure_output_folder, write_text_atomic
    from ..io.model_files import read_model_file
    from ..io.record import ResizeMode

    from ..inference.backends import canonical_backend, detect_format
    from ..inference.predictor import Predictor

    backend = canonical_backend(args.backend) if args.backend else None
    eager = detect_format(checkpoint) == "torch" and backend in (None, "torch")
    predictor = None  # runs the network unless it is the eager torch one (which DDP and --ema need)
    if eager:
        file = read_model_file(checkpoint)
        record = file.record
    else:
        if args.ema:
            raise EffdetsegError("--ema evaluates the EMA weights of a last.pth in eager PyTorch; drop --backend")
        if args.amp:
            raise EffdetsegError("--amp is for eager PyTorch; ONNX Runtime and OpenVINO run the network in fp32")
        # auto says its choice (measured on the first batch) when it makes it
        predictor = Predictor(checkpoint, device=args.device, backend=backend, log=lambda note: print(f"evaluate: {note}"))
        if backend != "auto":
            print(f"evaluate: {predictor.backend_note}")
        record = predictor.record
    if record is None:
        raise EffdetsegError(f"{checkpoint}: a bare state dict has no record (architecture, preprocessing); evaluate needs an effdetseg checkpoint")
    check_segmentation(record, checkpoint)
    cfg, data_source = data_config(checkpoint, record.provenance.data, overrides)
    data_cfg = cfg.data
    batch_size = args.batch_size or int(data_cfg.batch_size)
    positive("data.batch_size", batch_size)
    suffix = "" if args.split == "val" else f"_{args.split}"
    output = Path(args.output) if args.output else (checkpoint if checkpoint.is_dir() else checkpoint.parent) / f"eval_{checkpoint.stem}_{data_cfg.name}{suffix}.json"
    check_replaceable(output)
    ensure_output_folder(output.parent)  # before the evaluation, not after it

    ctx = init_distributed(args.device)
    try:
        if predictor is None:
            model = model_from_file(file)
            if args.ema:
                if not isinstance(file.training_state.get("ema"), dict):
                    raise EffdetsegError(f"--ema: {checkpoint} holds no EMA weights (only a last.pth of an EMA run does)")
                model.load_state_dict(file.training_state["ema"])
        num_classes = model.num_classes if predictor is None else predictor.num_classes
        labels = build_label_set(data_cfg)
        if num_classes != labels.num_classes:
            raise EffdetsegError(
                f"{checkpoint}: the model predicts {num_classes} classes but data {data_cfg.name} has {labels.num_classes}"
            )
        preprocessing = record.preprocessing
        if args.original_size:
            preprocessing = replace(preprocessing, resize=ResizeMode.original)
        tta = tta_from_args(args, preprocessing.size)
        amp_dtype = (torch.float16 if ctx.device.type == "cuda" else torch.bfloat16) if args.amp else None
        warning = slow_bf16_warning(ctx.device, amp_dtype, "--amp")
        if warning and ctx.is_main:
            print(warning)

        dataset = build_dataset(data_cfg, args.split, augment=False, normalize=False)
        plan = plan_cpu(ctx.device, "auto", data_cfg.num_workers, cached=False, processes_here=ctx.local_world_size)
        torch.set_num_threads(plan.threads)
        # ONNX Runtime's and OpenVINO's thread pools do not survive fork (a forked DataLoader worker
        # hangs): with another runtime the images are read in this process.
        workers = plan.workers if predictor is None else 0
        loader = val_loader(dataset, batch_size, workers, ctx)
        start = time.perf_counter()
        network = prepare_for_inference(model, ctx.device) if predictor is None else predictor.runner
        matrix = evaluate(
            network, loader, labels.num_classes, preprocessing,
            ignore_index=int(data_cfg.ignore_index), tta=tta, amp_dtype=amp_dtype,
            progress=ctx.is_main and not args.no_progress, description="evaluate",
        )
        seconds = time.perf_counter() - start
        if not ctx.is_main:
            return 0
        metrics = matrix.compute()
        title = (
            f"{checkpoint} on {data_cfg.name} {args.split} ({len(dataset)} images; input {preprocessing.describe()}; {tta.describe()})"
        )
        print(metrics.table(labels.names, title=title))
        print(f"mIoU {100 * metrics.miou:.2f}%")
        report = {
            "checkpoint": str(checkpoint),
            "weights": "ema" if args.ema else "model",
            "backend": "torch" if predictor is None else predictor.backend,
            "data": str(data_cfg.name),
            "data_config": data_source,
            "split": args.split,
            "images": len(dataset),
            "preprocessing": preprocessing.to_dict(),
            "tta": {"flip": tta.flip, "scales": list(tta.scales)},
            "slide": list(tta.window) if tta.window else None,
            "seconds": round(seconds, 2),
            **metrics.to_dict(labels.names, with_matrix=True),
        }
        try:
            write_text_atomic(output, json.dumps(report, indent=2) + "\n")
        except OSError as e:
            raise EffdetsegError(f"{output}: cannot write the metrics ({e.strerror})") from None
        print(f"wrote {output}")
        return 0
    finally:
        cleanup_distributed()
