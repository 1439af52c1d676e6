"""BiFPN feature network: the topology is data generated from the level range.

A feature network layer is a list of :class:`FpnNode`. Feature maps are numbered in the
order they appear: the layer's inputs first (one per level, ``min_level`` … ``max_level``),
then one new map per node. A node names the maps it fuses by those numbers, so the same
:class:`FpnLayer` builds BiFPN layers, the extra top-down pathway and any other topology.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import LEGACY, ConvBn, DownsampleToGrid, FastNormalizedFusion, SeparableConv2d, batch_norm, upsample_to_grid

PATHWAYS = ("top_down", "bottom_up")


@dataclass(frozen=True)
class FpnNode:
    level: int
    inputs: tuple[int, ...]  # indices into the layer's feature maps (inputs, then earlier nodes)


@dataclass(frozen=True)
class FpnTopology:
    min_level: int
    max_level: int
    nodes: tuple[FpnNode, ...]
    outputs: tuple[int, ...]  # per level, min → max: the map that leaves the layer

    @property
    def levels(self) -> range:
        return range(self.min_level, self.max_level + 1)

    def level_of(self, index: int) -> int:
        num_levels = len(self.levels)
        if index < num_levels:
            return self.min_level + index
        return self.nodes[index - num_levels].level


def fpn_topology(min_level: int, max_level: int, pathways: Sequence[str] = PATHWAYS) -> FpnTopology:
    """Generate a feature-network layer from its level range.

    ``top_down``: for level max-1 … min, fuse the level's latest map with the latest map one
    level up. ``bottom_up``: for level min+1 … max, fuse every map made at this level in this
    layer (the input and the top-down node) with the latest map one level down. Both together
    are one BiFPN layer (EfficientDet, fig. 2d); ``top_down`` alone is the extra pathway.
    """
    if min_level >= max_level:
        raise ValueError(f"min_level ({min_level}) must be below max_level ({max_level})")
    unknown = set(pathways) - set(PATHWAYS)
    if unknown:
        raise ValueError(f"unknown pathway(s) {sorted(unknown)}; choose from {PATHWAYS}")
    levels = list(range(min_level, max_level + 1))
    maps_at = {level: [i] for i, level in enumerate(levels)}  # every map per level, oldest first
    nodes: list[FpnNode] = []

    def add(level: int, inputs: list[int]) -> None:
        nodes.append(FpnNode(level, tuple(inputs)))
        maps_at[level].append(len(levels) + len(nodes) - 1)

    for pathway in pathways:
        if pathway == "top_down":
            for level in reversed(levels[:-1]):
                add(level, [maps_at[level][-1], maps_at[level + 1][-1]])
        else:
            for level in levels[1:]:
                add(level, maps_at[level] + [maps_at[level - 1][-1]])
    outputs = tuple(maps_at[level][-1] for level in levels)
    return FpnTopology(min_level, max_level, tuple(nodes), outputs)


class Resample(nn.Module):
    """Bring one edge's source map to the node's level (and channels, when projected)."""

    def __init__(self, in_channels: int, out_channels: int, level_step: int, project: bool, alpha: float = LEGACY) -> None:
        super().__init__()
        if abs(level_step) > 1:
            raise ValueError("a BiFPN edge spans at most one level")
        self.level_step = level_step  # node level − source level
        self.alpha = float(alpha)  # the backbone's pixel grid (effdetseg.layers.resample); LEGACY: nearest
        self.project = ConvBn(in_channels, out_channels) if project or in_channels != out_channels else nn.Identity()
        self.down = DownsampleToGrid(alpha) if level_step == 1 else nn.Identity()

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        x = self.down(self.project(x))
        if self.level_step == -1:
            # To the node's own size rather than by a factor of 2: the same numbers (the model pads
            # its input to 2**max_level), but shapes that match by construction under torch.export.
            x = upsample_to_grid(x, size, self.alpha)
        return x


class FpnNodeBlock(nn.Module):
    """Fuse the resampled inputs, then swish → depthwise-separable 3×3 → BN."""

    def __init__(self, inputs: Sequence[int], edges: list[Resample], channels: int) -> None:
        super().__init__()
        same_level = [i for i, edge in enumerate(edges) if edge.level_step == 0]
        if not same_level:
            raise ValueError("a node needs an input at its own level")
        self.inputs = list(inputs)  # the node's FpnNode.inputs, as a plain list TorchScript can read
        self.size_from = same_level[0]  # the input whose spatial size the node keeps
        self.edges = nn.ModuleList(edges)
        self.fuse = FastNormalizedFusion(len(edges))
        self.act = nn.SiLU()
        self.conv = SeparableConv2d(channels, channels)
        self.bn = batch_norm(channels)

    @torch.no_grad()
    def init_identity(self, own_level_weight: float = 2.0) -> None:
        """Start as ``BN(swish(fusion))`` with the node's own-level input weighted ``own_level_weight``
        against 1 for the others: the separable conv begins as the identity (a centred depthwise
        delta, an identity pointwise), so at the first step every level carries its backbone
        features instead of their image through random convolutions; the backbone edges' 1×1
        projections start orthogonal, keeping as many of the backbone's directions as they can."""
        self.fuse.weight.fill_(1.0)
        self.fuse.weight[self.size_from] = own_level_weight
        depthwise, pointwise = self.conv.depthwise.weight, self.conv.pointwise.weight
        depthwise.zero_()
        depthwise[:, :, depthwise.shape[2] // 2, depthwise.shape[3] // 2] = 1.0
        pointwise.copy_(torch.eye(pointwise.shape[0], pointwise.shape[1]).view_as(pointwise))
        for edge in self.edges:
            if not isinstance(edge.project, nn.Identity):
                nn.init.orthogonal_(edge.project.conv.weight)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        size = inputs[self.size_from].shape[-2:]
        resampled = [edge(inputs[i], size) for i, edge in enumerate(self.edges)]
        return self.bn(self.conv(self.act(self.fuse(resampled))))


class FpnLayer(nn.Module):
    """One layer of a feature network, built from an :class:`FpnTopology`.

    ``in_channels`` gives each input level's channels; inputs at ``project_levels`` get their
    own 1×1 conv + BN on every edge that reads them (the first BiFPN layer's backbone edges).
    """

    def __init__(
        self,
        topology: FpnTopology,
        in_channels: Sequence[int],
        channels: int,
        project_levels: Sequence[int] = (),
        alpha: float = LEGACY,
    ) -> None:
        super().__init__()
        self.topology = topology
        num_inputs = len(topology.levels)
        if len(in_channels) != num_inputs:
            raise ValueError(f"expected {num_inputs} input channel counts, got {len(in_channels)}")
        channels_of = list(in_channels) + [channels] * len(topology.nodes)
        self.nodes = nn.ModuleList()
        for node in topology.nodes:
            edges = [
                Resample(
                    channels_of[i],
                    channels,
                    level_step=node.level - topology.level_of(i),
                    project=i < num_inputs and topology.level_of(i) in project_levels,
                    alpha=alpha,
                )
                for i in node.inputs
            ]
            self.nodes.append(FpnNodeBlock(node.inputs, edges, channels))
        self.outputs = list(topology.outputs)
        self.grad_checkpointing = False

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = list(features)
        for block in self.nodes:
            inputs = [maps[i] for i in block.inputs]
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                # Keep only each node's inputs; its resampled, fused and convolved maps (the wide
                # P2-level ones dominate) are recomputed in the backward pass.
                maps.append(checkpoint(block, inputs, use_reentrant=False))
            else:
                maps.append(block(inputs))
        return [maps[i] for i in self.outputs]


class ExtraLevels(nn.Module):
    """P6 from C5 by 1×1 conv + BN and stride-2 max-pooling; each further level by max-pooling."""

    def __init__(self, in_channels: int, channels: int, num_levels: int, alpha: float = LEGACY) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.project = ConvBn(in_channels, channels) if num_levels > 0 else nn.Identity()
        self.pool = DownsampleToGrid(alpha)

    def forward(self, c5: torch.Tensor) -> list[torch.Tensor]:
        levels = []
        x = self.project(c5)
        for _ in range(self.num_levels):
            x = self.pool(x)
            levels.append(x)
        return levels


class BiFPN(nn.Sequential):
    """``num_layers`` BiFPN layers over ``min_level`` … ``max_level``.

    With ``last_layer_pathways=("top_down",)`` the last layer stops after its top-down pathway:
    the P2-only variant reads nothing the last bottom-up pathway would make.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_layers: int,
        min_level: int,
        max_level: int,
        backbone_levels: Sequence[int],
        last_layer_pathways: Sequence[str] = PATHWAYS,
        alpha: float = LEGACY,
    ) -> None:
        layers = []
        for i in range(num_layers):
            pathways = last_layer_pathways if i == num_layers - 1 else PATHWAYS
            layers.append(
                FpnLayer(
                    fpn_topology(min_level, max_level, pathways),
                    in_channels if i == 0 else [channels] * len(in_channels),
                    channels,
                    project_levels=backbone_levels if i == 0 else (),
                    alpha=alpha,
                )
            )
        super().__init__(*layers)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        for layer in self:
            features = layer(features)
        return features
