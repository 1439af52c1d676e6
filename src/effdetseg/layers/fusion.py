"""EfficientDet's fast normalized fusion of feature maps of one level."""
from __future__ import annotations

import torch
from torch import nn


class FastNormalizedFusion(nn.Module):
    """``sum_i relu(w_i) x_i / (sum_j relu(w_j) + eps)`` (EfficientDet, eq. 3).

    The ReLU keeps every weight non-negative; the normalisation keeps the sum of the effective
    weights just below one, without the softmax's cost.
    """

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self) -> torch.Tensor:
        w = torch.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        w = self.normalized_weights()
        out = inputs[0] * w[0]
        for i in range(1, len(inputs)):
            out = out.addcmul(inputs[i], w[i])  # one pass per input instead of a mul and an add
        return out
