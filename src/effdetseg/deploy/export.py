"""Deployment files: BatchNorm folding, ONNX / TorchScript export and the parity check.

BatchNorm folding: in eval mode ``BN(conv(x))`` is itself a convolution with scaled weights and a
bias, so the exported graph drops every BN that directly reads a convolution's output. Which
BN reads which convolution is found by running the network once with hooks (not from module
names), so the same code folds the BiFPN nodes (SeparableConv2d → BatchNorm2d: the BN folds
into the pointwise conv), the head, the 1×1 projections and timm's backbone, whose
``BatchNormAct2d`` keeps its activation after folding. The folded network is checked against
the original before it is used.

Dynamic shapes: batch, height and width are dynamic in both formats. The network pads its input
to a multiple of 128 and crops the logits back; the TorchScript tracer, the legacy ONNX exporter
(built on it) and the dynamo ONNX exporter all record that padding and cropping as computations on
the input shape, not as constants, which the parity check confirms at two input sizes and batch sizes.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..io.files import atomic_write
from ..io.labels import LabelSet
from ..errors import EffdetsegError
from .predictor import METADATA_KEY, TORCHSCRIPT_EXTRA_FILE, Predictor, Preprocessing, labels_to_json, preprocess

ONNX_EXPORTERS = ("dynamo", "legacy")
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
PARITY_THRESHOLD = 0.999
# Tracing input: batch 2 and unequal sides, so no exporter can take a size of 1, or H == W, as a
# constant of the graph.
TRACE_SHAPE = (2, 3, 256, 384)


@dataclass
class FoldReport:
    """Which BatchNorm layers were folded, and into which convolutions."""

    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv name, BN name)
    unfolded: list[str] = field(default_factory=list)  # BN layers left in the graph
    max_abs_diff: float = 0.0  # folded vs original on the probe input

    def summary(self) -> str:
        """``folded 146/146 BatchNorm layers (backbone 49/49, bifpn 80/80, …)``."""
        counts: dict[str, list[int]] = {}
        for _, bn in self.folded:
            counts.setdefault(bn.split(".")[0], [0, 0])[0] += 1
        for bn in self.unfolded:
            counts.setdefault(bn.split(".")[0], [0, 0])[1] += 1
        parts = [f"{part} {done}/{done + left}" for part, (done, left) in counts.items()]
        total = len(self.folded) + len(self.unfolded)
        text = f"folded {len(self.folded)}/{total} BatchNorm layers into convolutions"
        return text + (f" ({', '.join(parts)})" if parts else "")


def _batchnorm_replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN once its affine transform lives in the conv: nothing, or timm's act."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    # timm's BatchNormAct2d: batch_norm → drop → act
    return nn.Sequential(bn.drop, bn.act)


def _foldable(bn: nn.Module) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return False
    if type(bn) is nn.BatchNorm2d:
        return True
    from timm.layers import BatchNormAct2d

    return type(bn) is BatchNormAct2d


def _find_conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], list[str]]:
    """Run ``model`` once; a BN pairs with a conv when its input *is* that conv's output, untouched.

    Each layer must run exactly once (a shared module could not be folded for one use only),
    and the tensor's version counter must not have moved (no in-place op in between).
    """
    conv_outputs: dict[int, tuple[str, torch.Tensor, int]] = {}  # id(tensor) → (conv, tensor, version)
    calls: dict[str, int] = {}
    bn_inputs: dict[str, tuple[str, int] | None] = {}
    hooks = []

    def on_conv(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            conv_outputs[id(output)] = (name, output, output._version)

        return hook

    def on_bn(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            source = conv_outputs.get(id(args[0]))
            bn_inputs[name] = None
            if source is not None and source[1] is args[0] and source[2] == args[0]._version:
                bn_inputs[name] = (source[0], calls[name])

        return hook

    batchnorms = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    from timm.layers import Conv2dSame  # TF-"same" padding in forward, weights used as usual

    for name, module in model.named_modules():
        if type(module) in (nn.Conv2d, Conv2dSame):
            hooks.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    readers: dict[str, int] = {}
    for bn, source in bn_inputs.items():
        if source is not None:
            readers[source[0]] = readers.get(source[0], 0) + 1
    pairs = [
        (source[0], bn)
        for bn, source in bn_inputs.items()
        if source is not None
        and calls.get(bn) == 1
        and calls.get(source[0]) == 1
        and readers[source[0]] == 1
        and _foldable(modules[bn])
    ]
    paired = {bn for _, bn in pairs}
    return pairs, [bn for bn in batchnorms if bn not in paired]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorm(model: nn.Module, probe_size: tuple[int, int] = (96, 160), tolerance: float = 1e-3) -> tuple[nn.Module, FoldReport]:
    """A copy of ``model`` (eval mode, CPU, float32) with every foldable BN merged into its conv.

    The copy is run next to the original on a random probe input; a difference above
    ``tolerance`` (relative to the logits' scale) means a conv's output fed something besides its
    BN, and raises instead of exporting a wrong graph.
    """
    original = model.eval()
    folded = copy.deepcopy(model).cpu().float().eval()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 3, *probe_size, generator=generator)
    pairs, unfolded = _find_conv_bn_pairs(folded, probe)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(folded, bn_name, _batchnorm_replacement(bn))
    on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in original.parameters())
    reference_model = original if on_cpu else copy.deepcopy(original).cpu().float()
    with torch.no_grad():
        reference = reference_model(probe)
        result = folded(probe)
    max_abs_diff = float((reference - result).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if max_abs_diff > tolerance * max(scale, 1.0):
        raise RuntimeError(
            f"BatchNorm folding changed the output (max |Δ| {max_abs_diff:.3g} at logit scale {scale:.3g})"
        )
    return folded, FoldReport(folded=pairs, unfolded=unfolded, max_abs_diff=max_abs_diff)


def export_metadata(model: nn.Module, preprocessing: Preprocessing, labels: LabelSet | None = None) -> dict[str, Any]:
    """What an exported file needs to predict like its checkpoint (see :mod:`effdetseg.predictor`)."""
    info = preprocessing.to_json()
    info["model_config"] = dict(getattr(model, "model_config", {}))
    if labels is not None:
        info["labels"] = labels_to_json(labels)
    info["input"], info["output"] = INPUT_NAME, OUTPUT_NAME
    return info


def export_onnx(model: nn.Module, path: str | Path, metadata: dict[str, Any], exporter: str = "legacy", opset: int = ONNX_OPSET) -> None:
    """Write ``model`` as ONNX with dynamic batch, height and width, and ``metadata`` as JSON.

    ``legacy`` (default): the TorchScript-based exporter; PyTorch deprecates it, but it writes a
    correct dynamic graph of this network in seconds. ``dynamo``: the torch.export-based exporter
    (PyTorch's default), equally correct, but its symbolic-shape reasoning over the pad-and-crop
    arithmetic of six pyramid levels takes about a minute even for D0 on a 2-core CPU.
    """
    import onnx

    if exporter not in ONNX_EXPORTERS:
        raise EffdetsegError(f"--exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}")
    sample = torch.randn(*TRACE_SHAPE)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            if exporter == "dynamo":
                dynamic = torch.export.Dim.DYNAMIC
                program = torch.onnx.export(
                    model,
                    (sample,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes={"images": {0: dynamic, 2: dynamic, 3: dynamic}},
                    opset_version=opset,
                    verbose=False,
                )
                program.save(tmp)
            else:
                torch.onnx.export(
                    model,
                    (sample,),
                    tmp,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, OUTPUT_NAME)},
                    opset_version=opset,
                )
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    atomic_write(path, write)


def export_torchscript(model: nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Trace ``model`` (dynamic sizes, see the module doc) and save it with ``metadata``."""
    sample = torch.randn(*TRACE_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace(model, sample, check_trace=False)

        def write(tmp: str) -> None:
            torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(metadata)})

        atomic_write(path, write)


@dataclass(frozen=True)
class ParityResult:
    shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float  # fraction of pixels with the same argmax as PyTorch

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= PARITY_THRESHOLD

    def __str__(self) -> str:
        shape = "×".join(str(s) for s in self.shape)
        verdict = "ok" if self.passed else f"FAILED (needs ≥ {100 * PARITY_THRESHOLD:.1f} %)"
        return (
            f"input {shape}: max |Δlogit| {self.max_abs_diff:.3g}, "
            f"argmax agreement {100 * self.argmax_agreement:.3f} % {verdict}"
        )


def parity_inputs(image: np.ndarray, preprocessing: Preprocessing) -> list[torch.Tensor]:
    """Two inputs from one real image, different in batch and spatial size: the image at the
    export resolution (batch 1), and resized to keep its aspect ratio together with its mirror
    image (batch 2)."""
    square = preprocess(image, preprocessing)
    aspect = Preprocessing(preprocessing.resolution, True, preprocessing.mean, preprocessing.std)
    kept = preprocess(image, aspect)
    if kept.shape == square.shape:  # a square image: pick another size so the two inputs differ
        side = max(32, (preprocessing.resolution or image.shape[:2])[0] * 3 // 4)
        kept = preprocess(image, Preprocessing((side, side), False, preprocessing.mean, preprocessing.std))
    return [square, torch.cat([kept, kept.flip(-1)])]


def parity_check(reference: nn.Module, exported_path: str | Path, image: np.ndarray, preprocessing: Preprocessing) -> list[ParityResult]:
    """Run the exported file (onnxruntime / TorchScript) and the PyTorch ``reference`` on the same
    inputs; compare logits and argmax."""
    exported = Predictor(exported_path, device="cpu")
    reference = reference.cpu().float().eval()
    results = []
    for x in parity_inputs(image, preprocessing):
        with torch.inference_mode():
            expected = reference(x)
        actual = exported.run(x)
        if actual.shape != expected.shape:
            raise EffdetsegError(f"{exported_path}: output shape {tuple(actual.shape)} differs from PyTorch's {tuple(expected.shape)}")
        results.append(
            ParityResult(
                shape=tuple(x.shape),
                max_abs_diff=float((actual - expected).abs().max()),
                argmax_agreement=float((actual.argmax(1) == expected.argmax(1)).float().mean()),
            )
        )
    return results
