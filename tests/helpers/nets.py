"""A tiny multi-task network and a batch for it: the step's tests without a real model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtlkit.models.base import MultiTaskModel


class TinyNet(MultiTaskModel):
    """Conv-BN-pool-unpool trunk and 1x1 heads: the ops of the real models, in miniature."""

    def __init__(self, tasks) -> None:
        super().__init__(tasks)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.heads = nn.ModuleDict({t.name: nn.Conv2d(6, t.channels, 1) for t in tasks})

    def encode(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h, idx = F.max_pool2d(h, 2, 2, return_indices=True)
        return [F.max_unpool2d(F.relu(self.conv2(h)), idx, 2, 2)]

    def decode(self, reps, tasks=None):
        names = tasks or [t.name for t in self.tasks]
        return {n: self.heads[n](reps[0]) for n in names}

    def shared_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("heads")]


def _batch():
    gen = torch.Generator().manual_seed(0)
    normal = F.normalize(torch.randn(2, 3, 8, 8, generator=gen), dim=1)
    return {
        "image": torch.randn(2, 3, 8, 8, generator=gen),
        "seg": torch.randint(0, 3, (2, 8, 8), generator=gen),
        "depth": torch.rand(2, 1, 8, 8, generator=gen) + 0.1,
        "normal": normal,
    }
