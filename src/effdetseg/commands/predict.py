"""``effdetseg predict``: segment an image, a folder or a glob; write color mask, overlay and label ids.

For each image, at its original size:
- ``<name>_mask.png``: the color mask;
- ``<name>_overlay.jpg``: the mask alpha-blended on the image (``--overlay side``: the image and
  the mask side by side, as the original project wrote), with a legend of the classes present;
- ``<name>_labels.png``: the raw class ids as a palette PNG (pixel value = class id).
With a single image and ``--output dog_mask.jpg`` (an image file name), the color mask goes to
that file and the others next to it: ``dog_mask_overlay.jpg``, ``dog_mask_labels.png``.
Nothing is ever written over an input or twice in one run, and files of an earlier run are
replaced only with ``--overwrite`` (see :mod:`effdetseg.commands.predict_outputs`).

Exit status: 0 when every image was written; 1 when some images of a folder or glob could not
be read (the others are written, each bad one is reported on stderr); 2 for bad input
(nothing written).
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

from ..data.image_io import IMAGE_EXTENSIONS, image_files
from ..errors import EffdetsegError
from ..io.files import check_replaceable
from ..io.labels import LabelSet
from .args import (
    ArgumentParser, add_backend, add_device, add_max_image_pixels, add_model_source, add_tta, apply_max_image_pixels, positive, tta_from_args,
)
from .predict_outputs import plan_outputs


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="effdetseg predict",
        description="Segment images with a checkpoint (or an exported ONNX/OpenVINO/TorchScript file). Exit status: "
        "0 all written, 1 some images of a folder/glob were unreadable (the rest are written), 2 bad input.",
    )
    parser.add_argument("--data", required=True, help="an image, a folder of images, or a glob such as 'photos/*.jpg'")
    add_model_source(parser)
    parser.add_argument("--labels", help="labels JSON {\"0\": {\"class\": …, \"color\": [r, g, b]}, …} (default: the checkpoint's, else VOC for 21 classes)")
    parser.add_argument(
        "--resolution",
        type=int,
        help="resize images to this square size before the network (default: the checkpoint's preprocessing, "
        "else 512; 0 = original size); outputs always have the original size",
    )
    parser.add_argument("--keep-aspect", action="store_true", help="resize the longer side to --resolution instead of a square")
    parser.add_argument(
        "--output", "--output_name", default="predictions",
        help="output folder, or an image file name for a single image (default: predictions)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output files an earlier run left (inputs are never written)")
    parser.add_argument("--overlay", choices=("blend", "side"), default="blend", help="alpha-blended or side by side (default: blend)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the blended overlay (default: 0.5)")
    parser.add_argument("--no-legend", action="store_true", help="no legend on the overlay")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4, help="images per forward pass (default: 4)")
    add_tta(parser)
    add_device(parser)
    add_max_image_pixels(parser)
    add_backend(parser)
    return parser


def find_images(data: str) -> list[Path]:
    """The images ``--data`` names: one file, a folder's image files, or a glob's image files."""
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        images = image_files(path)
        if not images:
            raise EffdetsegError(f"{path}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return images
    if glob.has_magic(data):
        matches = sorted(Path(p) for p in glob.glob(data, recursive=True))
        images = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise EffdetsegError(f"{data}: the pattern matches no images")
        return images
    raise EffdetsegError(f"{data}: no such image, folder or pattern")


def _model_source(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The model file and the model name for a bare state dict."""
    if args.checkpoint and args.weights:
        raise EffdetsegError("give --checkpoint or --weights, not both")
    if args.checkpoint:
        return Path(args.checkpoint), args.model
    if args.weights:
        if not args.model:
            raise EffdetsegError("--weights needs --model NAME (e.g. efficientdet_d4_seg)")
        return Path(args.weights), args.model
    if args.model and (args.backend in ("onnx", "onnxruntime", "openvino", "torchscript") or Path(args.model).exists()):
        return Path(args.model), None
    raise EffdetsegError(
        "no model: give --checkpoint PATH, or --model NAME --weights PATH, or --backend onnx --model FILE.onnx"
    )


def _label_set(path: str | None, num_classes: int, stored: LabelSet | None) -> LabelSet:
    """--labels, else the checkpoint's own, else VOC for 21 classes, CamVid for 11, generic names."""
    if path is None:
        return stored if stored is not None else LabelSet.default_for(num_classes)
    labels = LabelSet.from_json(path)
    if labels.num_classes != num_classes:
        raise EffdetsegError(f"{path}: {labels.num_classes} classes, but the model predicts {num_classes}")
    return labels


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    positive("--batch-size", args.batch_size)
    positive("--resolution", args.resolution, 0)
    apply_max_image_pixels(args, args.resolution)
    if not 0.0 <= args.alpha <= 1.0:
        raise EffdetsegError(f"--alpha must be in [0, 1], got {args.alpha}")
    from tqdm import tqdm

    from ..data.image_io import read_image
    from ..devices import is_out_of_memory
    from ..inference.predictor import Predictor
    from ..pictures.label_maps import color_mask, label_image, overlay, present_classes, save_image, with_legend

    images = find_images(args.data)
    for paths in plan_outputs(images, Path(args.output), overwrite=True).paths:  # even with --overwrite:
        for path in paths.files:
            check_replaceable(path)  # never a checkpoint or a training run's file (curves.png, val_grid.png …)
    plan = plan_outputs(images, Path(args.output), overwrite=args.overwrite)
    plans = plan.paths
    source, model_name = _model_source(args)
    predictor = Predictor(
        source,
        device=args.device,
        backend=args.backend,
        model_name=model_name,
        num_classes=args.num_classes,
        resolution=args.resolution,
        keep_aspect=args.keep_aspect,
        batch_size=args.batch_size,
        log=print,  # auto: its choice, measured on the first input of each shape
    )
    predictor.tta = tta_from_args(args, predictor.preprocessing.size)
    labels_set = _label_set(args.labels, predictor.num_classes, predictor.labels)
    print(
        f"model {predictor.model_config.get('name', source.name)} ({predictor.num_classes} classes, "
        f"{predictor.backend} on {predictor.device}), input {predictor.preprocessing.describe()}"
        + ("" if predictor.tta.is_identity else f", {predictor.tta.describe()}")
    )
    for note in plan.notes:
        print(note)

    failures: list[str] = []
    written = 0
    started = time.perf_counter()
    # disable=None: no bar when stderr is not a terminal (logs keep one line per image and error)
    progress = tqdm(total=len(images), unit="img", disable=True if len(images) == 1 else None, file=sys.stderr)
    for start in range(0, len(images), args.batch_size):
        batch = []
        for path, plan in zip(images[start : start + args.batch_size], plans[start : start + args.batch_size]):
            try:
                batch.append((path, plan, read_image(path)))
            except EffdetsegError as e:
                if len(images) == 1:
                    raise
                failures.append(str(e))
                progress.write(f"effdetseg predict: error: {e}", file=sys.stderr)
                progress.update()
        if not batch:
            continue
        try:
            label_maps = predictor.predict([image for _, _, image in batch])
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise EffdetsegError(
                f"{batch[0][0]}: out of memory running the network on {len(batch)} image(s) ({predictor.device}); "
                "lower --batch-size or --resolution"
            ) from None
        for (path, plan, image), labels in zip(batch, label_maps):
            mask = color_mask(labels, labels_set)
            present = present_classes(labels, predictor.num_classes)
            picture = overlay(image, mask, args.overlay, args.alpha)
            if not args.no_legend:
                picture = with_legend(picture, labels_set, [class_id for class_id, _ in present])
            save_image(mask, plan.mask)
            save_image(picture, plan.overlay)
            save_image(label_image(labels, labels_set), plan.labels)
            classes = ", ".join(f"{labels_set.names[i]} {100 * share:.1f} %" for i, share in present)
            progress.write(f"{path} → {plan.mask}, {plan.overlay.name}, {plan.labels.name}: {classes}")
            written += 1
            progress.update()
    progress.close()
    elapsed = time.perf_counter() - started
    print(f"wrote {written} of {len(images)} image(s) in {elapsed:.1f} s ({written / max(elapsed, 1e-9):.2f} img/s)")
    if failures:
        print(f"effdetseg predict: error: {len(failures)} of {len(images)} image(s) could not be read (listed above)", file=sys.stderr)
        return 1
    return 0
