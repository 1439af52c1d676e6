"""``effdetseg classify``: top-k classes of one image with an (EfficientNet) classifier."""
from __future__ import annotations

from pathlib import Path

from ..errors import EffdetsegError, first_line
from ..io.labels import read_labels_json
from .args import ArgumentParser, add_device, add_max_image_pixels, apply_max_image_pixels, positive


def read_class_names(path: Path) -> list[str]:
    """Class names from JSON: a list, ``{"0": "name"}`` or the original's ``{"0": {"class": "name", …}}``."""
    raw = read_labels_json(path)
    if isinstance(raw, list):
        return [str(x) for x in raw]
    if isinstance(raw, dict):
        try:
            items = sorted(raw.items(), key=lambda kv: int(kv[0]))
        except ValueError:
            raise EffdetsegError(f"{path}: class ids must be integers") from None
        return [str(v["class"]) if isinstance(v, dict) and "class" in v else str(v) for _, v in items]
    raise EffdetsegError(f"{path}: expected a list of names or an id → name mapping")


def build_classifier(name: str, num_classes: int, weights: Path | None):
    """The classifier of an effdetseg model file, or ``name`` with timm/EfficientNet-PyTorch weights."""
    from ..io.build import model_from_file
    from ..io.model_files import read_model_file
    from ..io.record import SEGMENTATION_FAMILIES
    from ..models import create_model, model_family

    if weights is not None:
        file = read_model_file(weights)
        if file.record is not None:
            if file.record.architecture.is_segmentation:
                raise EffdetsegError(f"{weights}: {file.record.architecture.name!r} is a segmentation model; use `effdetseg predict`")
            return model_from_file(file)
    if model_family(name) in SEGMENTATION_FAMILIES:
        raise EffdetsegError(f"--model: {name!r} is a segmentation model; use `effdetseg predict`")
    try:
        return create_model(name, num_classes=num_classes, pretrained=weights if weights is not None else False)
    except EffdetsegError:
        raise
    except Exception as e:
        message = first_line(e)
        raise EffdetsegError(f"--model {name!r}: {message}") from None


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="effdetseg classify", description="Print the top-5 classes of an image.")
    parser.add_argument("--data", type=Path, required=True, help="image file")
    parser.add_argument("--model", default="efficientnet_b0", help="efficientnet_b0 … b7 or any timm classifier")
    parser.add_argument("--resolution", type=int, default=None, help="input size (default: the model's pretrained config)")
    parser.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, default=1000)
    parser.add_argument("--labels", type=Path, default=None, help="class names JSON (default: ImageNet names from timm)")
    parser.add_argument("--weights", type=Path, default=None, help="state dict (timm or EfficientNet-PyTorch naming) or effdetseg checkpoint")
    parser.add_argument("--top-k", "--topk", dest="topk", type=int, default=5, help="classes to print (default: 5)")
    add_device(parser)
    add_max_image_pixels(parser)
    args = parser.parse_args(argv)
    positive("--resolution", args.resolution, 32)
    apply_max_image_pixels(args, args.resolution)
    positive("--num-classes", args.num_classes)
    positive("--top-k", args.topk)

    import timm
    import torch
    from PIL import Image

    from ..data.image_io import read_image
    from ..devices import resolve_device

    device = resolve_device(args.device)
    image = Image.fromarray(read_image(args.data))
    model = build_classifier(args.model, args.num_classes, args.weights).to(device).eval()
    # Mean/std, interpolation and crop come from timm's pretrained config for this model.
    overrides = {"input_size": (3, args.resolution, args.resolution)} if args.resolution else {}
    data_config = timm.data.resolve_data_config(overrides, model=model)
    x = timm.data.create_transform(**data_config)(image).unsqueeze(0).to(device)
    with torch.inference_mode():
        probs = model(x).float().softmax(-1)[0]

    if args.labels is not None:
        names = read_class_names(args.labels)
    elif probs.numel() == 1000:
        info = timm.data.ImageNetInfo()
        names = [info.index_to_description(i) for i in range(1000)]
    else:
        names = [f"class_{i}" for i in range(probs.numel())]
    if len(names) != probs.numel():
        raise EffdetsegError(f"{args.labels}: {len(names)} class names for a model with {probs.numel()} classes")
    values, indices = probs.topk(min(args.topk, probs.numel()))
    for p, i in zip(values.tolist(), indices.tolist()):
        print(f"{p:.4f}  {names[i]}")
    return 0
