"""The parity check of an exported file: the file and the PyTorch network it came from run through
the same inference path on the same inputs — the image as the record's preprocessing makes it, and
a smaller, mirrored batch of two — and their logits and argmax are compared. ``effdetseg export``
fails when fewer than ``PARITY_THRESHOLD`` of the pixels agree.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..data.synthetic import SHAPES, render_scene
from ..errors import EffdetsegError
from ..inference.segment import ModelRunner, Runner, network_logits, preprocess
from ..io.record import Preprocessing, ResizeMode

PARITY_THRESHOLD = 0.999
# Without --image, the parity check runs on a generated scene of this size (not square, not a
# multiple of the network's stride).
GENERATED_PARITY_SIZE = (300, 420)


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


def generated_parity_image(size: tuple[int, int] = GENERATED_PARITY_SIZE) -> np.ndarray:
    """A procedural scene (textured background, a few shapes): a parity input that needs no file."""
    image, _ = render_scene(seed=0, index=0, height=size[0], width=size[1], shapes=list(SHAPES))
    return image


def parity_inputs(image: np.ndarray, preprocessing: Preprocessing) -> list[torch.Tensor]:
    """Two inputs from one image, different in batch and spatial size: the image as the record's
    preprocessing makes it (batch 1), and resized keeping its aspect ratio to 3/4 of that size,
    together with its mirror image (batch 2)."""
    first = preprocess(image, preprocessing)
    side = max(32, max(first.shape[-2:]) * 3 // 4)
    second = preprocess(image, replace(preprocessing, size=(side, side), resize=ResizeMode.keep_aspect))
    return [first, torch.cat([second, second.flip(-1)])]


class ExportedModel(Protocol):
    """What the parity check needs of an exported model (a ``Predictor``): its runner and its source."""

    source: Any

    def run(self, x: torch.Tensor) -> torch.Tensor: ...


def parity_check(reference: nn.Module | Runner, exported: ExportedModel, images: list[np.ndarray], preprocessing: Preprocessing) -> list[ParityResult]:
    """Run the exported file and the PyTorch ``reference`` through the same inference path on the
    same inputs; compare logits and argmax."""
    reference_runner = ModelRunner(reference.cpu().float().eval()) if isinstance(reference, nn.Module) else reference
    results = []
    for image in images:
        for x in parity_inputs(image, preprocessing):
            with torch.inference_mode():
                expected = network_logits(reference_runner, x)
                actual = network_logits(exported.run, x).cpu()
            if actual.shape != expected.shape:
                raise EffdetsegError(f"{exported.source}: output shape {tuple(actual.shape)} differs from PyTorch's {tuple(expected.shape)}")
            results.append(
                ParityResult(
                    shape=tuple(x.shape),
                    max_abs_diff=float((actual - expected).abs().max()),
                    argmax_agreement=float((actual.argmax(1) == expected.argmax(1)).float().mean()),
                )
            )
    return results
