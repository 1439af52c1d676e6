"""Segment images with a trained model: load once, then ``predict(image or batch)`` → label maps.

What it reads: an effdetseg model file (``effdetseg train`` output or ``save_model``), a model
folder (``save_pretrained`` / ``export --format hub``: ``config.json`` + ``model.safetensors``), a
bare state dict (the original project's ``model.pth``) given with the model name and number of
classes, or a file of ``effdetseg export``: ``.onnx``, an OpenVINO IR folder (``model.xml`` +
``model.bin``), TorchScript. What runs it (``backend``, :mod:`effdetseg.inference.backends`): the
file's own runtime by default (eager PyTorch for a checkpoint), or ``torch``, ``onnxruntime``,
``openvino`` or ``auto`` (the fastest installed, measured on the first input); a checkpoint run by ONNX Runtime
or OpenVINO is exported to ONNX in memory first.

Every backend runs the one inference path (:mod:`effdetseg.inference.segment`) with the model
record's preprocessing — the training size and resize mode, mean and std — so an exported model
predicts what its checkpoint does, and ``effdetseg evaluate`` measures what this class outputs.
A torch network is prepared once (:func:`prepare_for_inference`: BatchNorm folded, channels-last
on the CPU). Files are read once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from ..data.image_io import read_image
from ..devices import resolve_device
from ..errors import EffdetsegError
from ..io.build import model_from_file
from ..io.labels import LabelSet
from ..io.model_files import read_model_file
from ..io.record import SEGMENTATION_FAMILIES, ModelRecord, Preprocessing
from ..models import is_model, model_family
from .auto import AutoRunner, ChoiceCache
from .backends import detect_format, resolve_backend
from .onnx_graph import onnx_bytes
from .prepare import fold_batchnorm, prepare_for_inference
from .runners import OnnxRunner, OpenVinoRunner, TorchScriptRunner, export_record
from .segment import NO_TTA, ModelRunner, Runner, TestTimeAugmentation, preprocess, segment

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


def check_segmentation(record: ModelRecord, source: str | Path) -> None:
    if not record.architecture.is_segmentation:
        name = record.architecture.name
        if not is_model(name) and not timm.is_model(name):
            raise EffdetsegError(f"{source}: record architecture.name {name!r} is not a model effdetseg knows (see `effdetseg models`)")
        raise EffdetsegError(
            f"{source}: {record.architecture.name!r} is not a segmentation model (for classifiers use `effdetseg classify`)"
        )


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
        threads: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.tta = tta
        self.threads = threads
        self.log = log  # where backend auto says what it chose (once per input shape)
        self.model: nn.Module | None = None  # the prepared torch network (None for other backends)
        if isinstance(checkpoint, nn.Module):
            self.source = type(checkpoint).__name__
            self.choice = resolve_backend(backend, "torch", self.device)
            record = ModelRecord.for_model(checkpoint) if hasattr(checkpoint, "model_config") else None
            network: nn.Module | None = checkpoint
            self.num_classes = int(record.architecture.num_classes if record else checkpoint.num_classes)
        else:
            record, network = self._load_file(Path(checkpoint), backend, model_name, num_classes)
        if network is not None:
            record_prep = record.preprocessing if record is not None else Preprocessing.for_model(network)
            self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
            if self.choice.backend == "torch":
                self.model = prepare_for_inference(network, self.device, channels_last=self.channels_last)
                self._run: Runner = ModelRunner(self.model)
            elif self.choice.backend == "auto":
                cache = ChoiceCache(Path(checkpoint), self.threads) if isinstance(checkpoint, (str, Path)) else None
                self._run = self._auto_network(network, record or ModelRecord.for_model(network), cache)
            else:
                self._run = self._converted(network, record or ModelRecord.for_model(network), self.choice.backend)
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

    @property
    def runner(self) -> Runner:
        """The network as the inference path calls it: normalized batch → float32 logits."""
        return self._run

    @property
    def backend(self) -> str:
        """The backend that runs the model; with ``auto``, the one chosen for the last input shape
        ("auto" before the first input)."""
        return self._run.backend if isinstance(self._run, AutoRunner) else self.choice.backend

    @property
    def backend_note(self) -> str:
        """One line: which backend runs the model and, for ``auto``, why (the measured figures)."""
        return self._run.note if isinstance(self._run, AutoRunner) else self.choice.describe()

    def _converted(self, network: nn.Module, record: ModelRecord, backend: str, graph: bytes | None = None) -> Runner:
        """A torch network run by ONNX Runtime or OpenVINO: BatchNorm folded, exported to ONNX in
        memory (as ``effdetseg export`` writes it; or ``graph``, that export), loaded by the runtime."""
        if graph is None:
            graph = self._onnx_graph(network, record)
        if backend == "openvino":
            return OpenVinoRunner(graph, threads=self.threads, name=self.source)
        return OnnxRunner(graph, self.device, threads=self.threads, name=self.source)

    @staticmethod
    def _onnx_graph(network: nn.Module, record: ModelRecord) -> bytes:
        folded, _ = fold_batchnorm(network.cpu().float().eval())
        return onnx_bytes(folded, record)

    def _auto_network(self, network: nn.Module, record: ModelRecord, cache: ChoiceCache | None = None) -> AutoRunner:
        """``auto`` for a torch network: eager and the installed runtimes, built when first measured
        (one in-memory ONNX export shared by ONNX Runtime and OpenVINO)."""
        graph: list[bytes] = []

        def converted(backend: str) -> Runner:
            if not graph:
                graph.append(self._onnx_graph(network, record))
            return self._converted(network, record, backend, graph[0])

        factories: dict[str, Callable[[], Runner]] = {}
        for backend in self.choice.candidates:
            if backend == "torch":
                factories[backend] = lambda: ModelRunner(prepare_for_inference(network, self.device, channels_last=self.channels_last))
            else:
                factories[backend] = lambda backend=backend: converted(backend)
        return AutoRunner(factories, log=self.log, cache=cache)

    def _load_file(
        self, path: Path, backend: str | None, model_name: str | None, num_classes: int | None
    ) -> tuple[ModelRecord | None, nn.Module | None]:
        """(record, torch network or None); an exported file sets the runner instead."""
        if not path.exists():
            raise EffdetsegError(f"{path}: model file not found")
        self.source = str(path)
        self.choice = resolve_backend(backend, detect_format(path), self.device)
        if self.choice.file_format == "torch":
            file = read_model_file(path)
            if file.record is not None:
                check_segmentation(file.record, path)
            elif model_name is not None:
                if model_family(model_name) not in SEGMENTATION_FAMILIES:
                    raise EffdetsegError(f"--model: {model_name!r} is not a segmentation model (for classifiers use `effdetseg classify`)")
            network = model_from_file(file, model_name=model_name, num_classes=num_classes)
            self.num_classes = int(network.num_classes)
            return file.record or ModelRecord.for_model(network), network
        if self.choice.backend == "auto":
            factories = {"openvino": lambda: OpenVinoRunner(path, threads=self.threads),
                         "onnxruntime": lambda: OnnxRunner(path, self.device, threads=self.threads)}
            self._run = AutoRunner({b: factories[b] for b in self.choice.candidates}, log=self.log,
                                   cache=ChoiceCache(path, self.threads))
            first = self._run.runner(self.choice.candidates[0])  # onnxruntime: reads the record
            if first is None:
                raise EffdetsegError(self._run.failed[self.choice.candidates[0]])  # names the file already
            self._run.metadata = first.metadata
        elif self.choice.backend == "openvino":
            self._run = OpenVinoRunner(path, threads=self.threads)
        elif self.choice.backend == "onnxruntime":
            self._run = OnnxRunner(path, self.device, threads=self.threads)
        else:
            self._run = TorchScriptRunner(path, self.device)
        record = export_record(self._run.metadata, path)
        if record is not None:
            check_segmentation(record, path)
        channels = self._output_channels()
        if record is not None and channels != record.architecture.num_classes:
            raise EffdetsegError(
                f"{path}: the record says {record.architecture.num_classes} classes (architecture.num_classes), but the network "
                f"outputs {channels}; the file was changed after export: export the checkpoint again"
            )
        self.num_classes = channels
        if num_classes is not None and num_classes != self.num_classes:
            raise EffdetsegError(f"{path}: the exported model has {self.num_classes} classes, but num_classes is {num_classes}")
        return record, None

    def _output_channels(self) -> int:
        """The exported network's classes: as its graph states them, else from one small forward pass."""
        runner = self._run.runner(self.choice.candidates[0]) if isinstance(self._run, AutoRunner) else self._run
        stated = getattr(runner, "output_channels", lambda: None)()
        if stated is not None:
            return int(stated)
        with torch.inference_mode():
            return int(runner(torch.zeros(1, 3, 64, 64)).shape[1])

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
