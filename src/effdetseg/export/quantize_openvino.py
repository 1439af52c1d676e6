"""INT8 OpenVINO IR by NNCF post-training quantization, calibrated on real images.

What flows: the fp32 OpenVINO model (:func:`effdetseg.export.formats.openvino_model`, the record in
its rt_info) → NNCF's post-training quantization, its activation statistics gathered on real
images preprocessed by the one inference path with the record's preprocessing (the images come from
:func:`effdetseg.export.calibration.open_image_source`: a folder or a data preset's train split) → an
INT8 IR whose rt_info also says, under ``effdetseg_quantization``, how it was made.

Before NNCF the graph is put in the form int8 kernels need (:func:`prepared_for_nncf`): constants
folded, so every convolution's weights are a constant quantized per output channel and packed as
int8, and swish as one op, so it fuses into the int8 convolution before it.

Accuracy is protected in one of two ways (:class:`NncfRecipe`):
- ``keep_float``: layers that stay in fp32, by name pattern or operation type. The default keeps
  the ones whose errors reach every pixel unfiltered — the first convolution (it sees raw pixels),
  the classifier (its output is the argmax), the transposed-convolution upsampler (it runs on the
  logits); more groups (the TF-"SAME" Pad operations, the BiFPN's fusions, the backbone) can be named;
- ``accuracy_control``: NNCF's accuracy-aware quantization, which ranks the quantized layers by
  how much they cost and returns the worst to fp32 until the metric — here the fraction of
  pixels whose argmax matches the fp32 model on held-out images — is within ``max_drop``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import EffdetsegError
from ..inference.backends import QUANTIZATION_KEY, require_openvino
from ..inference.segment import preprocess
from ..io.record import Preprocessing
from .calibration import ImageSource


@dataclass(frozen=True)
class LayerGroup:
    """Layers NNCF may keep in fp32: regular expressions over OpenVINO node names (they follow the
    torch module paths through the ONNX export) and OpenVINO operation types."""

    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()


SENSITIVE_LAYERS = {
    # Measured on the CamVid-trained D0 (EfficientNet-Lite0), 12 CamVid val frames at 360×480, argmax
    # agreement with OpenVINO fp32 (benchmarks/nncf_layers.py, README "Deploying on a CPU with OpenVINO"):
    # nothing in fp32 99.0 %; stem, classifier, upsampler 99.3 %; + pad + fusion 99.3 % but 1.3× slower.
    # (Before prepared_for_nncf, the unpacked depthwise weights took it to 33 %; pad + fusion were the workaround.)
    "stem": LayerGroup(patterns=(r".*/conv_stem/.*",)),  # EfficientNet's first convolution (UNet: its first block)
    "classifier": LayerGroup(patterns=(r".*/head/classifier/.*",)),  # its output is the argmax
    "upsampler": LayerGroup(patterns=(r".*/upsample/.*",)),  # runs on the logits
    # pad: the explicit Pad operations of TF-"SAME" padding (tf_efficientnet_* backbones), before each
    # stride-2 depthwise convolution.
    "pad": LayerGroup(types=("Pad",)),
    # fusion: the BiFPN's fast normalised fusions (weighted sums of levels brought to one size) and the
    # 1×1 projections feeding them.
    "fusion": LayerGroup(patterns=(r".*/fuse/.*", r".*/edges\.\d+/project/.*")),
    "backbone": LayerGroup(patterns=(r".*/backbone/.*",)),  # most of the network's cost
}
DEFAULT_KEEP_FLOAT = ("stem", "classifier", "upsampler")
PRESETS = ("performance", "mixed")


def require_nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise EffdetsegError("INT8 for OpenVINO needs NNCF, part of the optional extra: pip install 'effdetseg[openvino]'") from None
    return nncf


@dataclass(frozen=True)
class NncfRecipe:
    """How NNCF quantizes: ``preset`` (performance: symmetric activations; mixed: asymmetric),
    the layers kept in fp32 (keys of :data:`SENSITIVE_LAYERS`), optional accuracy control with
    ``max_drop`` (a fraction of pixels of argmax agreement with fp32)."""

    preset: str = "performance"
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT
    accuracy_control: bool = False
    max_drop: float = 0.02
    fast_bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise EffdetsegError(f"NNCF preset must be one of {PRESETS}, got {self.preset!r}")
        unknown = [k for k in self.keep_float if k not in SENSITIVE_LAYERS]
        if unknown:
            raise EffdetsegError(f"--keep-float: unknown layer group(s) {unknown}; known: {', '.join(SENSITIVE_LAYERS)}")
        if not 0 < self.max_drop < 1:
            raise EffdetsegError(f"--max-drop must be a fraction in (0, 1), got {self.max_drop}")

    def describe(self) -> str:
        parts = [f"NNCF {self.preset}", "fp32: " + (", ".join(self.keep_float) or "none")]
        if self.accuracy_control:
            parts.append(f"accuracy control (argmax agreement drop ≤ {100 * self.max_drop:g} points)")
        return ", ".join(parts)


def parse_keep_float(text: str) -> tuple[str, ...]:
    """``stem,classifier`` → ("stem", "classifier"); ``none`` → ()."""
    return tuple(k.strip() for k in text.split(",") if k.strip() and k.strip() != "none")


def ignored_scope(keep_float: Sequence[str], extra: LayerGroup = LayerGroup()) -> Any:
    """NNCF's ``IgnoredScope`` of the named groups of :data:`SENSITIVE_LAYERS` (and ``extra``)."""
    groups = [SENSITIVE_LAYERS[k] for k in keep_float] + [extra]
    return require_nncf().IgnoredScope(
        patterns=[p for g in groups for p in g.patterns], types=[t for g in groups for t in g.types], validate=False,
    )


def prepared_for_nncf(model: Any) -> Any:
    """A copy of ``model``, computing the same function, in the form NNCF and OpenVINO's int8 kernels need.

    - Constant subgraphs computed: the ONNX import leaves every depthwise convolution's weights
      behind a Reshape; NNCF then cannot see them as weights, so it quantized them per kernel
      column, OpenVINO could not pack them, and every depthwise convolution ran in fp32 behind
      fake-quantize ops (D4 at 512², one process: 189 → 102 ms; CamVid D0 agreement 33 → 99 %).
    - ``x · sigmoid(x)`` (how ONNX spells SiLU/swish) as one Swish op: OpenVINO then fuses the
      activation and the following quantization into the int8 convolution before it, instead of
      running both in fp32 (D4 at 512², one process: 152 → 102 ms; fp32 results unchanged)."""
    require_openvino()
    from openvino import opset13, passes

    prepared = model.clone()
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(prepared)
    for op in prepared.get_ordered_ops():
        if op.get_type_name() != "Multiply":
            continue
        a, b = op.input_value(0), op.input_value(1)
        for x, gate in ((a, b), (b, a)):
            if gate.get_node().get_type_name() == "Sigmoid" and gate.get_node().input_value(0) == x:
                swish = opset13.swish(x)
                swish.set_friendly_name(op.get_friendly_name())  # keeps --keep-float patterns matching
                op.output(0).replace(swish.output(0))
                break
    prepared.validate_nodes_and_infer_types()
    return prepared


def _inputs(source: ImageSource, indices: Sequence[int], preprocessing: Preprocessing) -> list[np.ndarray]:
    return [preprocess(source.load(i), preprocessing).numpy() for i in indices]


def _argmax(compiled: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(compiled(x)[0]).argmax(1)


def quantize_openvino(
    model: Any,
    source: ImageSource,
    calibration: Sequence[int],
    preprocessing: Preprocessing,
    recipe: NncfRecipe = NncfRecipe(),
    validation: Sequence[int] = (),
    *,
    extra_float: LayerGroup = LayerGroup(),
    prepare: bool = True,
) -> Any:
    """The INT8 version of the fp32 ``openvino.Model`` ``model``, calibrated on ``source``'s images
    ``calibration``; with accuracy control, validated on the images ``validation``. The model
    record in its rt_info is kept; how it was quantized is added. ``extra_float``: more layers kept
    in fp32 than the recipe's groups; ``prepare=False`` quantizes the graph as read, not
    :func:`prepared_for_nncf` (both for benchmarks/nncf_layers.py's ablation)."""
    ov = require_openvino()
    nncf = require_nncf()
    model = prepared_for_nncf(model) if prepare else model
    calibration_items = _inputs(source, calibration, preprocessing)
    ignored = ignored_scope(recipe.keep_float, extra_float)
    preset = nncf.QuantizationPreset.PERFORMANCE if recipe.preset == "performance" else nncf.QuantizationPreset.MIXED
    common = dict(
        preset=preset,
        subset_size=len(calibration_items),
        fast_bias_correction=recipe.fast_bias_correction,
        ignored_scope=ignored,
    )
    if recipe.accuracy_control:
        if not validation:
            raise EffdetsegError("accuracy control needs held-out images to validate on (--check-images)")
        reference = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        inputs = _inputs(source, validation, preprocessing)
        validation_items = [(x, _argmax(reference, x)) for x in inputs]

        def agreement(compiled: Any, items: Any) -> tuple[float, list[float]]:
            """Fraction of pixels whose argmax matches fp32's, overall and per image."""
            per_image = [float((_argmax(compiled, x) == expected).mean()) for x, expected in items]
            return float(np.mean(per_image)), per_image

        quantized = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(calibration_items),
            nncf.Dataset(validation_items, lambda item: item[0]),
            agreement,
            max_drop=recipe.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            **common,
        )
    else:
        quantized = nncf.quantize(model, nncf.Dataset(calibration_items), **common)
    quantized.set_rt_info(
        json.dumps({
            "tool": f"nncf {nncf.__version__}",
            "recipe": {**asdict(recipe), "description": recipe.describe()},
            "calibration": {"source": source.description, "images": [source.names[i] for i in calibration]},
        }),
        [QUANTIZATION_KEY],
    )
    return quantized
