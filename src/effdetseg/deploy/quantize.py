"""INT8 ONNX by static quantization, calibrated on real images, and how well it agrees with fp32.

What flows: an fp32 ONNX file written by :func:`effdetseg.deploy.export.export_onnx` → ONNX Runtime's
pre-processing (ONNX shape inference and its basic graph optimizations) → activation ranges
measured on real training images, preprocessed by the one inference path with the model record's
preprocessing (:func:`effdetseg.deploy.inference.preprocess`, so calibration sees what deployment
sees) → a QDQ model with per-channel int8 weights and uint8 activations, carrying the same model
record and, under ``effdetseg_quantization``, how it was made.

Where the images come from (:func:`open_image_source`): a folder of images, or a data preset
(``camvid``, ``voc``, …) whose train split is read through the data layer. :func:`split_images`
picks the calibration images evenly over the source and holds out others for checking, where
:func:`label_agreement` counts the pixels the INT8 file labels as the checkpoint does.

Choices, measured with ``benchmarks/int8.py`` (figures in the README):
- uint8 activations with int8 weights (U8S8): on x86 ONNX Runtime then fuses every
  DequantizeLinear → Conv → QuantizeLinear into a QLinearConv (and the swish and fusion
  products into QLinearSigmoid / QLinearMul / QLinearAdd); with int8 activations it left 49 of
  D0's 113 convolutions in float, each wrapped in conversions.
- The network pads its input to a multiple of 128 and crops the logits back; in the graph that is
  float arithmetic on sizes (Shape → Cast → Div → Ceil → … → Pad / Slice). Quantizing it rounds a
  size (16 becomes 15, and two pyramid levels no longer add up), so every node that computes only
  from shapes stays in float (:func:`shape_arithmetic_nodes`).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..data.image_io import IMAGE_EXTENSIONS, image_files, read_image
from ..errors import EffdetsegError
from ..io.files import atomic_write
from ..io.record import Preprocessing
from .export import onnx_metadata
from .inference import preprocess
from .predictor import Predictor

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZATION_KEY = "effdetseg_quantization"  # ONNX metadata beside the model record: how the file was quantized


@dataclass(frozen=True)
class ImageSource:
    """Real images to calibrate and check with: ``count`` of them, read one at a time by ``load``."""

    description: str
    names: tuple[str, ...]
    load: Callable[[int], np.ndarray]
    skipped: tuple[str, ...] = ()  # "name: why" of the files of a folder that are not readable images

    @property
    def count(self) -> int:
        return len(self.names)


def open_image_source(spec: str, data_root: str | Path | None = None, experiment_config: Path | None = None) -> ImageSource:
    """``spec`` is a folder of images, or the name of a data preset whose train split is used:
    the experiment's own data config when ``experiment_config`` (its config.yaml) trained on that
    preset, else the package preset; ``data_root`` sets its ``data.root``. Anything else is one
    clear error."""
    from ..configs.compose import group_options

    path = Path(spec).expanduser()
    if path.is_dir():
        candidates = image_files(path)
        if not candidates:
            raise EffdetsegError(f"--calibration {spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        files, skipped = readable_images(candidates)
        if not files:
            raise EffdetsegError(f"--calibration {spec}: none of its {len(candidates)} image files is readable ({skipped[0]})")
        return ImageSource(f"folder {path}", tuple(p.name for p in files), lambda i: read_image(files[i]), tuple(skipped))
    presets = group_options()["data"]
    if spec not in presets:
        if path.exists():
            raise EffdetsegError(f"--calibration {spec}: not a folder of images")
        if "/" in spec or "\\" in spec or path.suffix:
            raise EffdetsegError(f"--calibration {spec}: folder not found")
        raise EffdetsegError(
            f"--calibration {spec}: neither an image folder nor a data preset (presets: {', '.join(presets)})"
        )
    return _preset_source(spec, data_root, experiment_config)


def readable_images(files: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The rule for a folder of calibration images: a file whose name says image but whose header
    no image decoder recognises (or that cannot be opened) is skipped and named — ``"x.jpg: not an
    image (unrecognised format)"`` — rather than counted; only the header is read here, a file
    truncated further on fails later, naming itself."""
    from PIL import Image, UnidentifiedImageError

    readable, skipped = [], []
    for file in files:
        try:
            with Image.open(file):
                pass
        except UnidentifiedImageError:
            skipped.append(f"{file.name}: not an image (unrecognised format)")
            continue
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append(f"{file.name}: unreadable ({e})")
            continue
        readable.append(file)
    return readable, skipped


def _preset_source(preset: str, data_root: str | Path | None, experiment_config: Path | None) -> ImageSource:
    from ..configs.compose import compose, load_yaml
    from ..data import build_dataset

    overrides = [f"data.root={data_root}"] if data_root is not None else []
    if experiment_config is not None and experiment_config.is_file() and (load_yaml(experiment_config).get("data") or {}).get("name") == preset:
        data_cfg = compose(overrides, base=experiment_config, section="data").data
    else:
        data_cfg = compose([f"data={preset}", *overrides], section="data").data
    if data_cfg.get("root") is None and data_cfg.get("format", preset) != "synthetic":
        raise EffdetsegError(f"--calibration {preset}: where are its files? give the preset's data.root with --data-root PATH")
    dataset = build_dataset(data_cfg, "train", augment=False, normalize=False)  # errors name data.root and the files it lacks
    names = tuple(dataset.sample_id(i) for i in range(len(dataset)))
    if not names:
        raise EffdetsegError(f"--calibration {preset}: the train split has no images")
    return ImageSource(f"data={preset} train split", names, lambda i: dataset.load(i)[0])


def evenly_spaced(candidates: Sequence[int], count: int) -> list[int]:
    """``count`` of ``candidates`` spread evenly over them (all of them when there are fewer)."""
    if count >= len(candidates):
        return list(candidates)
    return [candidates[i] for i in np.linspace(0, len(candidates) - 1, count).round().astype(int)]


def split_images(total: int, calibration: int, held_out: int) -> tuple[list[int], list[int]]:
    """Indices of the calibration images and of up to ``held_out`` others, both spread over the
    source (video frames and sorted folders put similar images next to each other)."""
    if calibration < 1:
        raise EffdetsegError(f"--calibration-images must be at least 1, got {calibration}")
    if total <= calibration:
        raise EffdetsegError(
            f"--calibration: {total} images, but {calibration} calibrate and at least one more must be held "
            "out to check agreement; lower --calibration-images or add images"
        )
    chosen = evenly_spaced(range(total), calibration)
    taken = set(chosen)
    return chosen, evenly_spaced([i for i in range(total) if i not in taken], held_out)


@dataclass(frozen=True)
class QuantizationRecipe:
    """How ONNX Runtime quantizes: calibration method and which nodes stay in float.

    ``op_types``: the op types to quantize (None: ONNX Runtime's default set for QDQ).
    ``keep_float``: node-name fragments (ONNX names follow module paths, e.g. ``/upsample/``)
    and op types (e.g. ``ConvTranspose``) left in float.
    """

    method: str = "minmax"
    op_types: tuple[str, ...] | None = None
    keep_float: tuple[str, ...] = ()
    activation_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    percentile: float = 99.999
    extra_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [self.method, f"{'u' if self.activation_type == 'uint8' else 's'}8 activations, s8 weights",
                 "per-channel" if self.per_channel else "per-tensor"]
        if self.op_types is not None:
            parts.append("only " + "/".join(self.op_types))
        if self.keep_float:
            parts.append("float: " + ", ".join(self.keep_float))
        if self.reduce_range:
            parts.append("7-bit weights")
        return ", ".join(parts)


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ONNX Runtime's calibrator one preprocessed image at a time."""

    def __init__(self, source: ImageSource, indices: Sequence[int], preprocessing: Preprocessing, input_name: str) -> None:
        self.source, self.indices = source, list(indices)
        self.preprocessing, self.input_name = preprocessing, input_name
        self._iterator: Iterator[int] = iter(self.indices)

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._iterator, None)
        if index is None:
            return None
        return {self.input_name: preprocess(self.source.load(index), self.preprocessing).numpy()}

    def rewind(self) -> None:
        self._iterator = iter(self.indices)


def shape_arithmetic_nodes(model: Any) -> list[str]:
    """Names of the nodes that compute only from tensor shapes and constants (the pad/crop sizes).

    A node is shape arithmetic when it is a Shape, or all its inputs are constants, initializers or
    outputs of shape arithmetic, at least one of them the latter (graph inputs never are).
    """
    constant = {init.name for init in model.graph.initializer} | {""}
    from_shapes: set[str] = set()
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant":
            constant.update(node.output)
            continue
        inputs = [name for name in node.input if name not in constant]
        if node.op_type == "Shape" or (inputs and all(name in from_shapes for name in inputs)):
            from_shapes.update(node.output)
            names.append(node.name)
    return names


def _nodes_kept_float(model: Any, recipe: QuantizationRecipe) -> list[str]:
    kept = shape_arithmetic_nodes(model)
    for node in model.graph.node:
        if any(fragment == node.op_type or fragment in node.name for fragment in recipe.keep_float):
            kept.append(node.name)
    return kept


def quantize_onnx(
    fp32_path: str | Path,
    output: str | Path,
    source: ImageSource,
    indices: Sequence[int],
    preprocessing: Preprocessing,
    recipe: QuantizationRecipe = QuantizationRecipe(),
) -> None:
    """Write the INT8 (QDQ) version of the ONNX file ``fp32_path`` to ``output``, calibrated on
    ``source``'s images ``indices`` as ``preprocessing`` prepares them."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe.method not in CALIBRATION_METHODS:
        raise EffdetsegError(f"calibration method must be one of {CALIBRATION_METHODS}, got {recipe.method!r}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    reader = ImageCalibrationReader(source, indices, preprocessing, input_name="")
    extra = {"CalibPercentile": recipe.percentile} if recipe.method == "percentile" else {}
    extra.update(recipe.extra_options)
    with tempfile.TemporaryDirectory(prefix="effdetseg-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Symbolic shape inference cannot follow the pad-to-128 arithmetic; ONNX's own can.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        reader.input_name = model.graph.input[0].name
        metadata = onnx_metadata(fp32_path)
        metadata[QUANTIZATION_KEY] = json.dumps({
            "format": "QDQ",
            "recipe": {**asdict(recipe), "description": recipe.describe()},
            "calibration": {"source": source.description, "images": [source.names[i] for i in indices]},
        })

        def write(tmp: str) -> None:
            quantize_static(
                str(prepared),
                tmp,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.op_types) if recipe.op_types is not None else None,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=QuantType.QUInt8 if recipe.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=_nodes_kept_float(model, recipe),
                calibrate_method=methods[recipe.method],
                extra_options=extra,
            )
            quantized = onnx.load(tmp)
            del quantized.metadata_props[:]  # the model record of the fp32 file, and how this one was made
            for key, value in metadata.items():
                entry = quantized.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(quantized, tmp)

        atomic_write(output, write)


@dataclass
class Agreement:
    """Pixels labelled alike by two models, accumulated image by image."""

    images: int = 0
    pixels: int = 0
    agreeing: int = 0
    worst_image: float = 1.0  # the lowest agreement of one image

    def add(self, expected: np.ndarray, actual: np.ndarray) -> None:
        same = int((expected == actual).sum())
        self.images, self.pixels, self.agreeing = self.images + 1, self.pixels + expected.size, self.agreeing + same
        self.worst_image = min(self.worst_image, same / expected.size)

    @property
    def fraction(self) -> float:
        return self.agreeing / self.pixels if self.pixels else 0.0


def label_agreement(reference: Predictor, candidate: Predictor, images: Iterable[np.ndarray]) -> Agreement:
    """Pixels labelled alike by ``reference`` and ``candidate`` (each through ``Predictor.predict``:
    its own preprocessing, label maps at the original size), over all ``images``."""
    agreement = Agreement()
    for image in images:
        agreement.add(reference.predict(image), candidate.predict(image))
    return agreement
