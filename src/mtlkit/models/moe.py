"""Pieces the mixture-of-experts architectures share: input-dependent gates and expert mixing.

A :class:`Gate` maps a feature map (or the image) to a distribution over ``n`` experts per sample:
``softmax(W pool_g(x) + b)``, with ``pool_g`` an adaptive average pool to a ``g x g`` grid. MMoE,
PLE and DSelect-k define their gates on the input vector; LibMTL applies a linear layer to the
whole flattened image (331,776 inputs per expert at 288x384), which ties the model to one input
size. Pooling to a small grid (``gate_grid``, default 4) keeps the gate's spatial layout, works
at any size and costs ``C g^2 n`` weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Gate(nn.Module):
    """Per-sample softmax weights over ``n`` experts from ``in_channels`` x ``grid`` x ``grid`` pooled features."""

    def __init__(self, in_channels: int, n: int, grid: int = 4) -> None:
        super().__init__()
        self.grid = grid
        self.linear = nn.Linear(in_channels * grid * grid, n)

    def features(self, x: Tensor) -> Tensor:
        """``x`` pooled to the grid and flattened: the gate's input vector."""
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x)).softmax(dim=-1)


def mix(weights: Tensor, experts: list[Tensor]) -> Tensor:
    """``sum_e weights[:, e] * experts[e]`` per sample (weights ``(B, E)``, experts ``(B, ...)``)."""
    stacked = torch.stack(experts, dim=1)
    w = weights.view(*weights.shape, *([1] * (stacked.dim() - 2))).to(stacked.dtype)
    return (w * stacked).sum(dim=1)
