"""Preparing a network for inference once: eval mode, BatchNorm folded into the convolutions,
the right memory layout and device.

BatchNorm folding: in eval mode ``BN(conv(x))`` is itself a convolution with scaled weights and a
bias, so every BN that directly reads a convolution's output can go. Which BN reads which
convolution is found by running the network once with hooks (not from module names), so the same
code folds the BiFPN nodes (SeparableConv2d → BatchNorm2d: the BN folds into the pointwise conv),
the head, the 1×1 projections and timm's backbone, whose ``BatchNormAct2d`` keeps its activation
after folding. The folded network is checked against the original before it is used.

``prepare_for_inference`` is what Predictor, predict, evaluate, validation and benchmark run; the
exported ONNX and TorchScript files are traced from the same folded network.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..devices import resolve_device


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device | None = None,
    *,
    channels_last: bool | None = None,
    fold: bool = True,
) -> nn.Module:
    """A copy of ``model`` ready to predict: eval mode, BatchNorm folded into the preceding
    convolutions (verified on a probe input), on ``device`` (None/"auto": CUDA when available),
    channels-last on the CPU (where oneDNN's depthwise convolutions run about twice as fast) unless
    ``channels_last`` says otherwise. The model passed in is not changed. Run the result under
    ``torch.inference_mode()`` (``effdetseg.inference.segment.segment`` does).
    """
    device = resolve_device(device)
    prepared = fold_batchnorm(model)[0] if fold else copy.deepcopy(model).eval()
    if channels_last is None:
        channels_last = device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    prepared = prepared.to(device=device, memory_format=memory_format).eval()
    prepared.requires_grad_(False)
    return prepared


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


def _find_conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], list[str], torch.Tensor]:
    """Run ``model`` once (returning its output too); a BN pairs with a conv when its input *is*
    that conv's output, untouched.

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
            output = model(probe)
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
    return pairs, [bn for bn in batchnorms if bn not in paired], output


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorm(model: nn.Module, probe_size: tuple[int, int] = (96, 160), tolerance: float = 1e-3) -> tuple[nn.Module, FoldReport]:
    """A copy of ``model`` (eval mode, CPU, float32) with every foldable BN merged into its conv;
    ``model`` itself is not touched (not even its train/eval mode).

    The copy runs on a random probe input before and after folding; a difference above
    ``tolerance`` (relative to the logits' scale) means a conv's output fed something besides its
    BN, and raises instead of exporting a wrong graph.
    """
    folded = copy.deepcopy(model).cpu().float().eval()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 3, *probe_size, generator=generator)
    pairs, unfolded, reference = _find_conv_bn_pairs(folded, probe)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(folded, bn_name, _batchnorm_replacement(bn))
    with torch.no_grad():
        result = folded(probe)
    max_abs_diff = float((reference - result).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if max_abs_diff > tolerance * max(scale, 1.0):
        raise RuntimeError(
            f"BatchNorm folding changed the output (max |Δ| {max_abs_diff:.3g} at logit scale {scale:.3g})"
        )
    return folded, FoldReport(folded=pairs, unfolded=unfolded, max_abs_diff=max_abs_diff)
