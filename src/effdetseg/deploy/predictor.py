"""Segment images with a trained model: load once, then ``predict(image or batch)`` → label maps.

Backends (picked from the file unless told):
- ``torch``: an effdetseg model file (``effdetseg train`` output or ``save_model``), a model folder
  (``save_pretrained`` / ``export --format hub``: ``config.json`` + ``model.safetensors``), or a bare
  state dict (the original project's ``model.pth``) given with the model name and number of classes;
- ``onnx``: a file written by ``effdetseg export`` (``.onnx``), run with onnxruntime;
- ``torchscript``: a file written by ``effdetseg export --format torchscript``.

Every backend runs the one inference path (:mod:`effdetseg.deploy.inference`) with the model
record's preprocessing — the training size and resize mode, mean and std — so an exported model
predicts what its checkpoint does, and ``effdetseg evaluate`` measures what this class outputs.
A torch network is prepared once (:func:`prepare_for_inference`: BatchNorm folded, channels-last
on the CPU). Files are read once.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.image_io import read_image
from ..devices import resolve_device
from ..errors import EffdetsegError
from ..io.labels import LabelSet
from ..io.record import (
    METADATA_KEY,
    SEGMENTATION_FAMILIES,
    ModelRecord,
    Preprocessing,
    build_model,
    legacy_record,
    read_model_file,
)
from .inference import NO_TTA, ModelRunner, Runner, TestTimeAugmentation, preprocess, segment
from .prepare import prepare_for_inference

BACKENDS = ("torch", "onnx", "torchscript")
TORCHSCRIPT_EXTRA_FILE = f"{METADATA_KEY}.json"
LEGACY_EXPORT_KEY = "effdetseg"  # ONNX metadata / TorchScript extra file of effdetseg 0.1.0

ImageInput = str | Path | np.ndarray | Image.Image


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


def check_segmentation(record: ModelRecord, source: str | Path) -> None:
    if not record.architecture.is_segmentation:
        import timm

        from ..models import is_model

        name = record.architecture.name
        if not is_model(name) and not timm.is_model(name):
            raise EffdetsegError(f"{source}: record architecture.name {name!r} is not a model effdetseg knows (see `effdetseg models`)")
        raise EffdetsegError(
            f"{source}: {record.architecture.name!r} is not a segmentation model (for classifiers use `effdetseg classify`)"
        )


class OnnxRunner:
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
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[:1]
        return torch.from_numpy(logits).float()


class TorchScriptRunner:
    def __init__(self, path: Path, device: torch.device) -> None:
        extra = {TORCHSCRIPT_EXTRA_FILE: "", f"{LEGACY_EXPORT_KEY}.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except Exception as e:
            raise EffdetsegError(f"{path}: not a loadable TorchScript file ({type(e).__name__}: {e})") from None
        self.device = device
        self.metadata = {METADATA_KEY: extra[TORCHSCRIPT_EXTRA_FILE], LEGACY_EXPORT_KEY: extra[f"{LEGACY_EXPORT_KEY}.json"]}
        self.metadata = {k: v for k, v in self.metadata.items() if v}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device)).float()


def export_record(metadata: Mapping[str, str], path: Path) -> ModelRecord | None:
    """The record an exported file carries (None for files exported by other tools)."""
    if METADATA_KEY in metadata:
        return ModelRecord.from_json(metadata[METADATA_KEY], path)
    if LEGACY_EXPORT_KEY in metadata:
        try:
            stored = json.loads(metadata[LEGACY_EXPORT_KEY])
        except json.JSONDecodeError as e:
            raise EffdetsegError(f"{path}: corrupt effdetseg metadata ({e})") from None
        return legacy_record(stored, path) if isinstance(stored, Mapping) and "model_config" in stored else None
    return None


class Predictor:
    """Load a model once; ``predict`` turns images into label maps (and probabilities on request).

    ``checkpoint``: a model file (see the module doc for formats) or a built segmentation
    ``nn.Module``. ``device``: "cpu", "cuda", "cuda:N", a torch.device, or None/"auto" for CUDA
    when available. ``resolution``: None → the record's preprocessing (the training size and resize
    mode; 512 for files without one); N → resize to N×N (the longer side to N with
    ``keep_aspect=True``); 0 → no resizing. ``mean``/``std`` override the normalization.
    ``channels_last``: the torch network's memory layout (default: channels-last on the CPU).
    ``labels``: the record's label set (names and colors) when it has one that fits, else None.

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
        channels_last: bool | None = None,
        tta: TestTimeAugmentation = NO_TTA,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.tta = tta
        self.model: nn.Module | None = None  # the prepared torch network (None for exported files)
        if isinstance(checkpoint, nn.Module):
            self.backend, self.source = "torch", type(checkpoint).__name__
            record = ModelRecord.for_model(checkpoint) if hasattr(checkpoint, "model_config") else None
            network: nn.Module | None = checkpoint
            self.num_classes = int(record.architecture.num_classes if record else checkpoint.num_classes)
        else:
            record, network = self._load_file(Path(checkpoint), backend, model_name, num_classes)
        if network is not None:
            self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
            self.model = prepare_for_inference(network, self.device, channels_last=self.channels_last)
            self._run: Runner = ModelRunner(self.model)
            if record is None:
                record_prep = Preprocessing.for_model(network)
            else:
                record_prep = record.preprocessing
        else:
            record_prep = record.preprocessing if record is not None else Preprocessing()
        self.record = record
        self.model_config: dict[str, Any] = record.architecture.config() if record is not None else {}
        labels = record.labels if record is not None else None
        self.labels: LabelSet | None = labels if labels is not None and labels.num_classes == self.num_classes else None
        preprocessing = record_prep.with_resolution(resolution, keep_aspect)
        if mean is not None or std is not None:
            preprocessing = replace(
                preprocessing,
                mean=tuple(float(v) for v in mean) if mean is not None else preprocessing.mean,
                std=tuple(float(v) for v in std) if std is not None else preprocessing.std,
            )
        self.preprocessing = preprocessing

    def _load_file(
        self, path: Path, backend: str | None, model_name: str | None, num_classes: int | None
    ) -> tuple[ModelRecord | None, nn.Module | None]:
        """(record, torch network or None); an exported file sets the runner instead."""
        if not path.exists():
            raise EffdetsegError(f"{path}: model file not found")
        self.source = str(path)
        self.backend = backend or detect_backend(path)
        if self.backend not in BACKENDS:
            raise EffdetsegError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "torch":
            file = read_model_file(path)
            if file.record is not None:
                check_segmentation(file.record, path)
            elif model_name is not None:
                from ..models import model_family

                if model_family(model_name) not in SEGMENTATION_FAMILIES:
                    raise EffdetsegError(f"--model: {model_name!r} is not a segmentation model (for classifiers use `effdetseg classify`)")
            network = build_model(file, model_name=model_name, num_classes=num_classes)
            self.num_classes = int(network.num_classes)
            return file.record or ModelRecord.for_model(network), network
        self._run = (OnnxRunner if self.backend == "onnx" else TorchScriptRunner)(path, self.device)
        record = export_record(self._run.metadata, path)
        if record is not None:
            check_segmentation(record, path)
        self.num_classes = record.architecture.num_classes if record is not None else self._probe_num_classes()
        if num_classes is not None and num_classes != self.num_classes:
            raise EffdetsegError(f"{path}: the exported model has {self.num_classes} classes, but num_classes is {num_classes}")
        return record, None

    def _probe_num_classes(self) -> int:
        with torch.inference_mode():
            return int(self._run(torch.zeros(1, 3, 64, 64)).shape[1])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Network logits (B×C×h×w, float32) of an already preprocessed batch."""
        with torch.inference_mode():
            return self._run(x)

    def logits(self, image: np.ndarray) -> torch.Tensor:
        """Network logits (1×C×h×w) of one uint8 H×W×3 image, at the network's input size."""
        return self.run(preprocess(image, self.preprocessing, getattr(self._run, "device", "cpu")))

    def predict(self, images: ImageInput | Sequence[ImageInput], return_probabilities: bool = False) -> Any:
        """Label maps of one image or a batch.

        One image (path, PIL image, H×W×3 uint8 array) → an H×W array of class ids (uint8 up to
        256 classes, else int32); a list, or a B×H×W×3 array → a list of them. With
        ``return_probabilities=True`` also the softmax probabilities, float32 C×H×W per image:
        ``(labels, probabilities)``. Every map has its image's original size.
        """
        single = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        arrays = [as_rgb_array(item) for item in ([images] if single else list(images))]
        results = segment(
            self._run, arrays, self.preprocessing, tta=self.tta, batch_size=self.batch_size, probabilities=return_probabilities
        )
        label_dtype = np.uint8 if self.num_classes <= 256 else np.int32
        labels = [r.labels.cpu().numpy().astype(label_dtype) for r in results]
        probabilities = [r.probabilities.cpu().numpy() for r in results] if return_probabilities else []
        if single:
            return (labels[0], probabilities[0]) if return_probabilities else labels[0]
        return (labels, probabilities) if return_probabilities else labels
