"""Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

Paper: [Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
Multilingual Models](https://arxiv.org/abs/2010.05874), ICLR 2021.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import (
    GramianWeighting,
    combine_rows,
    generator_state,
    new_generator,
    set_generator_state,
)
from mtlkit.weighting.gradients import gramian


def gradvac_weights(
    gramian: Tensor, targets: Tensor, beta: float = 1e-2, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(weights, new_targets): GradVac's coefficients on the raw rows and the updated cosine targets.

    For each task i and each other task j (random order): phi = cos(g_i', g_j) with g_i' the
    current vaccinated gradient; if phi < phi_hat_ij, g_i' += g_j ||g_i'|| (phi_hat sqrt(1 -
    phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2)), which sets cos(g_i', g_j)
    to phi_hat exactly; then phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi. Works on inner
    products only: g_i' = c_i^T G.
    """
    m = gramian.double().cpu()
    k = m.shape[0]
    coef = torch.eye(k, dtype=torch.float64)
    new = targets.double().cpu().clone()
    tiny = 1e-12
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i or m[j, j] <= 0:
                continue
            norm_i = float(coef[i] @ m @ coef[i]) ** 0.5
            norm_j = float(m[j, j]) ** 0.5
            if norm_i <= 0:
                continue
            phi = float(coef[i] @ m[:, j]) / (norm_i * norm_j)
            phi = max(-1.0, min(1.0, phi))
            target = float(new[i, j])
            if phi < target:
                root_t = math.sqrt(max(1.0 - target * target, tiny))
                root_p = math.sqrt(max(1.0 - phi * phi, 0.0))
                coef[i, j] += norm_i * (target * root_p - phi * root_t) / (norm_j * root_t)
            new[i, j] = (1.0 - beta) * target + beta * phi
    return coef.sum(0), new


def gradvac(
    grads: Tensor, targets: Tensor, beta: float = 1e-2, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(d, weights, new_targets): the sum of the vaccinated task gradients."""
    w, new = gradvac_weights(gramian(grads), targets, beta, generator)
    return combine_rows(w, grads), w, new


@WEIGHTINGS.register("gradvac")
class GradVac(GramianWeighting):
    r"""GradVac: raise each pair's gradient cosine to an EMA target instead of only removing conflicts.

    For a pair $(i, j)$ whose cosine $\phi_{ij}$ is below its target $\hat\phi_{ij}$, $g_i$ gets a multiple of
    $g_j$ added so that the cosine becomes $\hat\phi_{ij}$; the targets follow
    $\hat\phi_{ij} \leftarrow (1 - \beta) \hat\phi_{ij} + \beta \phi_{ij}$.
    The paper can vaccinate per layer; this works on the whole shared gradient (one group).

    Options: `beta` (1e-2, the paper's EMA rate of the cosine targets, which start at 0), `seed` (0)
    of the random task order (checkpointed with the targets).

    A step without some tasks (no label in the batch) vaccinates the present tasks' gradients against
    each other and moves only the targets of pairs of present tasks; pairs with an absent task keep
    theirs.

    Guarantees: after processing pair $(i, j)$, $\cos(g_i', g_j) \ge \hat\phi_{ij}$ (equality when it was
    raised); with all targets at 0 it reduces to PCGrad's projection for conflicting pairs;
    non-conflicting pairs above target are left unchanged.
    """

    properties = frozenset({"sum_when_equal"})

    targets: Tensor

    def __init__(self, task_names: list[str], beta: float = 1e-2, seed: int = 0) -> None:
        super().__init__(task_names)
        beta = float(beta)
        if not 0.0 < beta <= 1.0:
            raise ConfigError(f"weighting.options.beta must be in (0, 1], got {beta!r}")
        self.beta = beta
        self.generator = new_generator(seed)
        self.register_buffer("targets", torch.zeros(self.num_tasks, self.num_tasks, dtype=torch.float64))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """GradVac's coefficients; updates the cosine targets."""
        if self.present is None:
            w, new = gradvac_weights(gramian, self.targets, self.beta, self.generator)
            self.targets.copy_(new.to(self.targets.device))
            return w
        pair = torch.meshgrid(*[torch.tensor(self.present, device=self.targets.device)] * 2, indexing="ij")
        w, new = gradvac_weights(gramian, self.targets[pair], self.beta, self.generator)
        self.targets[pair] = new.to(self.targets)
        return w

    def get_extra_state(self) -> dict[str, Any]:
        """The generator state (a uint8 tensor)."""
        return {"generator": generator_state(self.generator)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the generator state."""
        set_generator_state(self.generator, state["generator"])
