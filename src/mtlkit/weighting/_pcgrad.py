"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020): gradient surgery.

Paper: [Gradient Surgery for Multi-Task Learning](https://arxiv.org/abs/2001.06782), NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import (
    GramianWeighting,
    combine_rows,
    generator_state,
    new_generator,
    set_generator_state,
)
from mtlkit.weighting.gradients import gramian


def pcgrad_weights(gramian: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Weights w with sum_k w_k g_k = sum_i g_i^PC, computed from inner products only.

    For each task i, g_i^PC starts at g_i and, for the other tasks j in a random order, loses its
    component along g_j when g_i^PC . g_j < 0: g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j. Every
    g_i^PC is a combination c_i^T G of the original rows, so c_i evolves on the Gramian.
    """
    m = gramian.double().cpu()
    k = m.shape[0]
    coef = torch.eye(k, dtype=torch.float64)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i or m[j, j] <= 0:
                continue
            dot = coef[i] @ m[:, j]
            if dot < 0:
                coef[i, j] -= dot / m[j, j]
    return coef.sum(0)


def pcgrad(grads: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(d, weights): the sum of the projected ("surgered") task gradients."""
    w = pcgrad_weights(gramian(grads), generator)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("pcgrad")
class PCGrad(GramianWeighting):
    r"""PCGrad: project each task gradient off the normal plane of every gradient it conflicts with.

    For each task $i$, in a random order of the others $j$: if $g_i'^\top g_j < 0$ then
    $g_i' \leftarrow g_i' - \frac{g_i'^\top g_j}{\lVert g_j \rVert^2} g_j$; the update is $d = \sum_i g_i'$.

    Options: `seed` (0) of the generator drawing the projection order (checkpointed).

    Guarantees: a gradient with no conflicting partner is left unchanged; for two tasks each
    projected gradient has a non-negative inner product with the other task's gradient, so the
    sum $d$ satisfies $d^\top g_k \ge 0$ for both; with no conflicts $d = \sum_k g_k$ (the `equal` update).
    """

    properties = frozenset({"sum_when_equal"})

    def __init__(self, task_names: list[str], seed: int = 0) -> None:
        super().__init__(task_names)
        self.generator = new_generator(seed)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """PCGrad's coefficients on the raw task gradients."""
        return pcgrad_weights(gramian, self.generator)

    def get_extra_state(self) -> dict[str, Any]:
        """The generator state (a uint8 tensor)."""
        return {"generator": generator_state(self.generator)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the generator state."""
        set_generator_state(self.generator, state["generator"])
