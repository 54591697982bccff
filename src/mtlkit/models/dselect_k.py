"""DSelect-k (Hazimeh et al., *DSelect-k: Differentiable Selection in the Mixture of Experts with
Applications to Multi-Task Learning*, NeurIPS 2021): MMoE whose gates pick ``k`` experts.

Per task and sample, ``k`` selectors each choose one of ``n`` experts through ``m = ceil(log2 n)``
smooth-step "bits": ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2``, else
``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2``. Selector i puts weight ``prod_b r(z_ib, code_e,b)``
on expert e (``r = S(z)`` where the code's bit is 1, else ``1 - S(z)``); the selectors are
combined with ``softmax(w)``. Once every ``|z_ib| >= gamma/2`` each selector is one-hot: at most
k experts have non-zero weight (exact sparsity, reached in finite time).

Choices where the paper leaves room: z and w are per-sample (the paper's "per-example" gating,
as LibMTL) linear maps of the image pooled to a ``gate_grid`` grid; z starts uniform in
``+-gamma/100`` (the official initialisation), w in ``+-0.05``. When ``n`` is not a power of two
the selector's weights are renormalised over the n valid codes (the paper adds a penalty
instead), so gates are always distributions. The paper's optional entropy regulariser is left
out: it needs a loss term outside the task losses.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.mmoe import MMoE
from mtlkit.models.over_backbone import positive_int
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step: 0 below ``-gamma/2``, 1 above ``gamma/2``, C1 in between."""
    inner = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner))


class DSelectGate(nn.Module):
    """k binary-encoded selectors over ``n`` experts, combined by softmax weights; output ``(B, n)``."""

    def __init__(self, in_features: int, n: int, k: int, gamma: float, grid: int) -> None:
        super().__init__()
        self.n, self.k, self.gamma, self.grid = n, k, gamma, grid
        self.bits = max(1, math.ceil(math.log2(n)))
        codes = torch.tensor([[(e >> (self.bits - 1 - b)) & 1 for b in range(self.bits)] for e in range(n)])
        self.register_buffer("codes", codes.bool(), persistent=False)
        self.z = nn.Linear(in_features, k * self.bits)
        self.w = nn.Linear(in_features, k)
        for p in self.z.parameters():
            if not p.is_meta:
                nn.init.uniform_(p, -gamma / 100, gamma / 100)
        for p in self.w.parameters():
            if not p.is_meta:
                nn.init.uniform_(p, -0.05, 0.05)

    def selectors(self, z: Tensor) -> Tensor:
        """``(B, k, n)`` selector distributions from bit logits ``z`` ``(B, k, bits)``."""
        s = smooth_step(z, self.gamma).unsqueeze(2)  # (B, k, 1, bits)
        per_bit = torch.where(cast(Tensor, self.codes), s, 1 - s)  # (B, k, n, bits)
        sel = per_bit.prod(dim=-1)
        if self.n != 2**self.bits:
            sel = sel / sel.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return sel

    def forward(self, x: Tensor) -> Tensor:
        f = torch.nn.functional.adaptive_avg_pool2d(x, self.grid).flatten(1)
        sel = self.selectors(self.z(f).view(-1, self.k, self.bits))
        return torch.einsum("bk,bkn->bn", self.w(f).softmax(dim=-1), sel)


@ARCHITECTURES.register("dselect_k")
class DSelectK(MMoE):
    """Shared expert backbones; each task's gate selects k of them (DSelect-k)."""

    arch_name = "dselect_k"

    def __init__(
        self,
        tasks: list[Task],
        width: float = 1.0,
        *,
        backbone: str = "segnet",
        in_channels: int = 3,
        pretrained: str = "none",
        align_corners: bool = False,
        num_experts: int = 4,
        k: int = 2,
        gamma: float = 1.0,
        gate_grid: int = 4,
    ) -> None:
        self.k = positive_int(k, "k")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ConfigError(f"model.options.gamma must be a positive number (got {gamma!r})")
        if isinstance(num_experts, int) and not isinstance(num_experts, bool) and self.k > num_experts:
            raise ConfigError(f"model.options.k ({k}) must not exceed model.options.num_experts ({num_experts})")
        self.gamma = float(gamma)
        super().__init__(
            tasks,
            width,
            backbone=backbone,
            in_channels=in_channels,
            pretrained=pretrained,
            align_corners=align_corners,
            num_experts=num_experts,
            gate_grid=gate_grid,
        )

    def make_gates(self, in_channels: int) -> nn.ModuleDict:
        """One :class:`DSelectGate` per task."""
        f = in_channels * self.gate_grid**2
        return nn.ModuleDict(
            {t.name: DSelectGate(f, self.num_experts, self.k, self.gamma, self.gate_grid) for t in self.tasks}
        )
