"""INT8 ONNX by static quantization, calibrated on real images.

What flows: an fp32 ONNX file written by :func:`effdetseg.export.formats.export_onnx` → ONNX Runtime's
pre-processing (ONNX shape inference and its basic graph optimizations) → activation ranges
measured on real training images (:mod:`effdetseg.export.calibration`), preprocessed by the one
inference path with the model record's preprocessing (:func:`effdetseg.inference.segment.preprocess`,
so calibration sees what deployment sees) → a QDQ model with per-channel int8 weights and uint8
activations, carrying the same model record and, under ``effdetseg_quantization``, how it was made.

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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..errors import EffdetsegError
from ..inference.backends import QUANTIZATION_KEY
from ..inference.onnx_graph import onnx_metadata
from ..inference.segment import preprocess
from ..io.files import atomic_write
from ..io.record import Preprocessing
from .calibration import ImageSource

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


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
