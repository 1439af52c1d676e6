"""Segment images with a trained model: load once, then ``predict(image or batch)`` → label maps.

Backends (picked from the file unless told):
- ``torch``: an effdetseg checkpoint (``effdetseg train`` output or ``save_model``), or a bare state
  dict (the original project's ``model.pth``) given with the model name and number of classes;
- ``onnx``: a file written by ``effdetseg export --format onnx``, run with onnxruntime;
- ``torchscript``: a file written by ``effdetseg export --format torchscript``.

Preprocessing is the same for every backend, so an exported model predicts what the checkpoint does:
1. resize to ``resolution``×``resolution`` (a square, as the original project did; with
   ``keep_aspect=True`` the longer side becomes ``resolution`` instead; ``resolution=0`` keeps the
   original size — the network pads any size to its stride internally);
2. scale to [0, 1] and normalize with the checkpoint's own mean/std when it stores them, else the
   backbone's timm ``pretrained_cfg`` mean/std (ImageNet's for models without a timm backbone);
3. resize the logits (bilinear) back to each image's original size, then take the argmax.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..io.record import load_model, load_weights, read_model_config
from ..data.image_io import read_image
from ..io.labels import LabelSet
from ..errors import EffdetsegError
from ..models import create_model, model_family

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 512
SEGMENTATION_FAMILIES = ("efficientdet_seg", "efficientdet_seg_p2", "unet")
BACKENDS = ("torch", "onnx", "torchscript")
# Exported files carry this JSON (ONNX metadata_props / TorchScript extra file): model config,
# mean, std and resolution, so they predict without the checkpoint.
METADATA_KEY = "effdetseg"
TORCHSCRIPT_EXTRA_FILE = "effdetseg.json"

ImageInput = str | Path | np.ndarray | Image.Image


@dataclass(frozen=True)
class Preprocessing:
    """How images become network input. ``resolution`` (height, width); None keeps the original size."""

    resolution: tuple[int, int] | None
    keep_aspect: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resolution is None:
            return height, width
        if self.keep_aspect:
            scale = max(self.resolution) / max(height, width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        return self.resolution

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """A path, PIL image or array → uint8 H×W×3 RGB (grayscale stacked, alpha dropped)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 RGB, got {image.dtype}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
        raise TypeError(f"image arrays must be H×W×3 (RGB), got shape {image.shape}")
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def preprocess(image: np.ndarray, preprocessing: Preprocessing, device: torch.device | str = "cpu") -> torch.Tensor:
    """One uint8 H×W×3 image → normalized float 1×3×h×w network input on ``device``."""
    if not image.flags.writeable:
        image = image.copy()  # torch.from_numpy wants a writable array
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    size = preprocessing.resized_size(*image.shape[:2])
    if size != tuple(image.shape[:2]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(preprocessing.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" → CUDA when available, else CPU; asking for CUDA without one is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EffdetsegError("device cuda: CUDA is not available on this machine (use --device cpu)")
    return device


def detect_backend(path: str | Path) -> str:
    """``.onnx`` → onnx; a zip archive with TorchScript code → torchscript; anything else → torch."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist()):
                return "torchscript"
    return "torch"


def _as_size(resolution: int | Sequence[int] | None) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, int):
        if resolution < 0:
            raise EffdetsegError(f"resolution must be positive (0 = original size), got {resolution}")
        return None if resolution == 0 else (resolution, resolution)
    height, width = (int(v) for v in resolution)
    if height <= 0 or width <= 0:
        raise EffdetsegError(f"resolution must be positive, got {height}×{width}")
    return height, width


def checkpoint_extras(path: str | Path) -> dict[str, Any]:
    """What a torch checkpoint stores besides the weights, when it does (training checkpoints do).

    ``mean``/``std`` from ``normalize: {mean, std}``; ``resolution`` from ``input_size: [h, w]``
    (or ``resolution``); ``labels`` from ``labels: {names, colors}``. A resolved training config
    under ``config`` is read too (``data.normalize``, ``data.preprocessing.resize_height/width``).
    Missing entries are simply absent.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return {}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}  # read_model_config / load_weights report unreadable files with their own message
    if not isinstance(obj, Mapping):
        return {}
    extras: dict[str, Any] = {}
    data = obj["config"].get("data", {}) if isinstance(obj.get("config"), Mapping) else {}
    normalize = obj.get("normalize") or data.get("normalize")
    if isinstance(normalize, Mapping) and "mean" in normalize and "std" in normalize:
        extras["mean"] = tuple(float(v) for v in normalize["mean"])
        extras["std"] = tuple(float(v) for v in normalize["std"])
    size = obj.get("input_size") or obj.get("resolution")
    preprocessing = data.get("preprocessing") if isinstance(data.get("preprocessing"), Mapping) else {}
    if size is None and preprocessing.get("resize_height") and preprocessing.get("resize_width"):
        size = (preprocessing["resize_height"], preprocessing["resize_width"])
    if size is not None:
        extras["resolution"] = size
    labels = obj.get("labels")
    if isinstance(labels, Mapping) and labels.get("names") and labels.get("colors"):
        extras["labels"] = labels_from_json(labels)
    return extras


def labels_from_json(labels: Mapping[str, Any]) -> LabelSet:
    """``{"names": [...], "colors": [[r, g, b], ...]}`` (checkpoints, export metadata) → LabelSet."""
    return LabelSet(tuple(str(n) for n in labels["names"]), tuple(tuple(int(v) for v in c) for c in labels["colors"]))


def labels_to_json(labels: LabelSet) -> dict[str, Any]:
    return {"names": list(labels.names), "colors": [list(c) for c in labels.colors]}


def _model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(getattr(model, "backbone", None), "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def _check_segmentation(name: str, source: str) -> None:
    if model_family(name) not in SEGMENTATION_FAMILIES:
        raise EffdetsegError(f"{source}: {name!r} is not a segmentation model (for classifiers use `effdetseg classify`)")


def build_torch_model(path: str | Path, model_name: str | None = None, num_classes: int | None = None) -> nn.Module:
    """The network of a checkpoint (its own config) or of a bare state dict (name + classes given).

    A checkpoint whose config disagrees with ``model_name`` or ``num_classes`` is an error naming both.
    """
    config = read_model_config(path)
    if config is None:
        if model_name is None:
            raise EffdetsegError(
                f"{path}: a bare state dict with no model config; pass the model name and num_classes "
                "(e.g. `--model efficientdet_d4_seg --num_classes 21 --weights FILE`)"
            )
        _check_segmentation(model_name, "--model")
        model = create_model(model_name, num_classes=num_classes)
        load_weights(model, path)
        return model.eval()
    if num_classes is not None and int(config["num_classes"]) != num_classes:
        raise EffdetsegError(f"{path}: the checkpoint has {config['num_classes']} classes, but num_classes is {num_classes}")
    if model_name is not None and config["name"] != model_name:
        raise EffdetsegError(f"{path}: the checkpoint holds {config['name']}, not {model_name}")
    _check_segmentation(config["name"], str(path))
    return load_model(path)


class _TorchRunner:
    """The network in eval mode; channels-last memory layout unless told otherwise (on a 2-core CPU
    it runs efficientdet_d0_seg at 512² about 2.5× faster than NCHW, with the same logits)."""

    def __init__(self, model: nn.Module, device: torch.device, channels_last: bool) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=self.memory_format).eval()
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.to(self.device, memory_format=self.memory_format)).float()


class _OnnxRunner:
    """onnxruntime on CUDA when asked for and available, else on CPU."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:
            raise EffdetsegError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")  # pre- and post-processing run in torch on the CPU
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[:1]
        return torch.from_numpy(logits).float()


class _TorchScriptRunner:
    def __init__(self, path: Path, device: torch.device) -> None:
        extra = {TORCHSCRIPT_EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except Exception as e:
            raise EffdetsegError(f"{path}: not a loadable TorchScript file ({type(e).__name__}: {e})") from None
        self.device = device
        self.metadata = {METADATA_KEY: extra[TORCHSCRIPT_EXTRA_FILE]} if extra[TORCHSCRIPT_EXTRA_FILE] else {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.to(self.device)).float()


class Predictor:
    """Load a model once; ``predict`` turns images into label maps (and probabilities on request).

    ``checkpoint``: a checkpoint path (see the module doc for formats) or a built segmentation
    ``nn.Module``. ``device``: "cpu", "cuda", a torch.device, or None for CUDA when available.
    ``resolution``: None → the checkpoint's training size when it records one, else 512;
    0 → no resizing. ``mean``/``std`` override the normalization. ``channels_last`` runs a torch
    network in that memory layout (faster on CPU; the module passed in is converted in place).
    ``labels`` is the checkpoint's label set (names and colors) when it stores one, else None.

    >>> predictor = Predictor("experiments/run/best.pth")
    >>> labels = predictor.predict("dog.jpg")                         # H×W uint8 class ids
    >>> labels, probs = predictor.predict([img1, img2], return_probabilities=True)
    """

    def __init__(
        self,
        checkpoint: str | Path | nn.Module,
        device: str | torch.device | None = None,
        *,
        backend: str | None = None,
        model_name: str | None = None,
        num_classes: int | None = None,
        resolution: int | Sequence[int] | None = None,
        keep_aspect: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 8,
        channels_last: bool = True,
    ) -> None:
        self.device = pick_device(device)
        self.batch_size = max(1, int(batch_size))
        self.model: nn.Module | None = None  # the torch network (None for exported files)
        if isinstance(checkpoint, nn.Module):
            self.backend, self.source, self.model = "torch", type(checkpoint).__name__, checkpoint.eval()
            stored: dict[str, Any] = {}
        else:
            stored = self._load_file(Path(checkpoint), backend, model_name, num_classes)
        if self.model is not None:
            self._run: Any = _TorchRunner(self.model, self.device, channels_last)
            self.model_config = dict(getattr(self.model, "model_config", {}))
            self.num_classes = int(self.model.num_classes)
            model_mean, model_std = _model_mean_std(self.model)
            stored.setdefault("mean", model_mean)
            stored.setdefault("std", model_std)
        self._input_device = self._run.device
        labels = stored.get("labels")
        self.labels: LabelSet | None = labels_from_json(labels) if isinstance(labels, Mapping) else labels
        if self.labels is not None and self.labels.num_classes != self.num_classes:
            self.labels = None  # names that do not fit the output: the caller picks a label set
        self.preprocessing = Preprocessing(
            resolution=_as_size(resolution if resolution is not None else stored.get("resolution", DEFAULT_RESOLUTION)),
            keep_aspect=keep_aspect,
            mean=tuple(float(v) for v in (mean if mean is not None else stored.get("mean", IMAGENET_MEAN))),
            std=tuple(float(v) for v in (std if std is not None else stored.get("std", IMAGENET_STD))),
        )

    def _load_file(self, path: Path, backend: str | None, model_name: str | None, num_classes: int | None) -> dict[str, Any]:
        """Load a checkpoint (sets ``self.model``) or an exported file (sets ``self._run``); returns
        the preprocessing and labels the file stores."""
        if not path.is_file():
            raise EffdetsegError(f"{path}: model file not found")
        self.source = str(path)
        self.backend = backend or detect_backend(path)
        if self.backend not in BACKENDS:
            raise EffdetsegError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "torch":
            self.model = build_torch_model(path, model_name, num_classes)
            return checkpoint_extras(path)
        self._run = (_OnnxRunner if self.backend == "onnx" else _TorchScriptRunner)(path, self.device)
        stored = self._read_export_metadata(self._run.metadata, path)
        self.model_config = stored.get("model_config", {})
        self.num_classes = int(self.model_config.get("num_classes") or self._probe_num_classes(self._run))
        if num_classes is not None and num_classes != self.num_classes:
            raise EffdetsegError(f"{path}: the exported model has {self.num_classes} classes, but num_classes is {num_classes}")
        return stored

    @staticmethod
    def _read_export_metadata(metadata: Mapping[str, str], path: Path) -> dict[str, Any]:
        if METADATA_KEY not in metadata:
            return {}  # a file exported by other tools: ImageNet normalization, classes from the output
        try:
            stored = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise EffdetsegError(f"{path}: corrupt effdetseg metadata ({e})") from None
        if stored.get("resolution") is not None:
            stored["resolution"] = tuple(stored["resolution"])
        return stored

    def _probe_num_classes(self, runner: Any) -> int:
        x = torch.zeros(1, 3, 64, 64, device=runner.device)
        return int(runner(x).shape[1])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Network logits (B×C×h×w, float32) of an already preprocessed batch."""
        return self._run(x.to(self._input_device))

    def logits(self, image: np.ndarray) -> torch.Tensor:
        """Network logits (1×C×h×w) of one uint8 H×W×3 image, at the network's input size."""
        return self.run(preprocess(image, self.preprocessing, self._input_device))

    def predict(
        self, images: ImageInput | Sequence[ImageInput], return_probabilities: bool = False
    ) -> Any:
        """Label maps of one image or a batch.

        One image (path, PIL image, H×W×3 uint8 array) → an H×W array of class ids (uint8 up to
        256 classes, else int32); a list, or a B×H×W×3 array → a list of them. With
        ``return_probabilities=True`` also the softmax probabilities, float32 C×H×W per image:
        ``(labels, probabilities)``. Every map has its image's original size.
        """
        single = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if single else list(images)
        arrays = [as_rgb_array(item) for item in items]
        labels: list[np.ndarray] = []
        probabilities: list[np.ndarray] = []
        for start in range(0, len(arrays), self.batch_size):
            batch_labels, batch_probs = self._predict_batch(arrays[start : start + self.batch_size], return_probabilities)
            labels += batch_labels
            probabilities += batch_probs
        if single:
            return (labels[0], probabilities[0]) if return_probabilities else labels[0]
        return (labels, probabilities) if return_probabilities else labels

    def _predict_batch(self, arrays: list[np.ndarray], with_probabilities: bool) -> tuple[list, list]:
        """Images that resize to the same size run as one batch; nothing is padded between images,
        so a prediction does not depend on the batch it was in."""
        labels: list[np.ndarray | None] = [None] * len(arrays)
        probabilities: list[np.ndarray | None] = [None] * len(arrays)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(arrays):
            groups.setdefault(self.preprocessing.resized_size(*image.shape[:2]), []).append(i)
        label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        for indices in groups.values():
            x = torch.cat([preprocess(arrays[i], self.preprocessing, self._input_device) for i in indices])
            logits = self._run(x)
            for row, i in enumerate(indices):
                original_size = arrays[i].shape[:2]
                scores = logits[row : row + 1]
                if tuple(scores.shape[-2:]) != tuple(original_size):
                    scores = F.interpolate(scores, size=original_size, mode="bilinear", align_corners=False)
                labels[i] = scores.argmax(1)[0].to(label_dtype).cpu().numpy()
                if with_probabilities:
                    probabilities[i] = scores.softmax(1)[0].cpu().numpy()
        return labels, probabilities if with_probabilities else []
