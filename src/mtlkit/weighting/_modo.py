"""MoDo (Chen, Fernando, Ying, Chen & Liu, NeurIPS 2023): multi-objective gradient with double sampling.

Paper: [Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
Conflict-Avoidance](https://arxiv.org/abs/2305.12255), NeurIPS 2023.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, positive_float, simplex_put, simplex_start
from mtlkit.weighting._solvers import as_numpy, project_simplex, to_tensor
from mtlkit.weighting.gradients import gramian


def modo_step(gramian: Tensor, lam: np.ndarray, gamma: float = 1e-3, rho: float = 0.1) -> np.ndarray:
    """lambda <- Pi_simplex(lambda - gamma (G G^T lambda + rho lambda)): one projected step on MGDA's dual."""
    m = as_numpy(gramian)
    return project_simplex(lam - gamma * (m @ lam + rho * lam))


def modo(grads: Tensor, gamma: float = 1e-3, rho: float = 0.1) -> tuple[Tensor, Tensor]:
    """(d, weights): one MoDo step from the uniform lambda."""
    k = grads.shape[0]
    w = to_tensor(modo_step(gramian(grads), np.full(k, 1.0 / k), gamma, rho))
    return combine_rows(w, grads), w


@WEIGHTINGS.register("modo")
class MoDo(GramianWeighting):
    r"""MoDo: task weights follow one projected gradient step per batch on ||G^T lambda||^2 / 2.

    $$\lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma \, (G_1 G_2^\top \lambda + \rho \lambda)\big),
    \qquad d = G_3^\top \lambda,$$

    with $\lambda$ on the simplex $\Delta$, starting at $1/K$. The paper's $G_1, G_2, G_3$ are three
    independent batches; here all are the step's batch ($G_1 G_2^\top$ = the Gramian). $\lambda$ is a
    buffer (checkpointed).

    Options: `gamma` (1e-3), `rho` (0.1): LibMTL's defaults from the authors' code.

    A step without some tasks (no label in the batch) moves the present tasks' share of $\lambda$
    (renormalised to the simplex) on their own Gramian and gives it back the mass those tasks held:
    the absent tasks' weights are unchanged and $\lambda$ stays on the simplex.

    Guarantees: $\lambda$ stays on the simplex; equal gradients give that gradient.
    """

    properties = frozenset({"permutation_equivariant", "mean_when_equal"})

    lam: Tensor

    def __init__(self, task_names: list[str], gamma: float = 1e-3, rho: float = 0.1) -> None:
        super().__init__(task_names)
        self.gamma = positive_float("gamma", gamma)
        self.rho = positive_float("rho", rho, allow_zero=True)
        self.register_buffer("lam", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Advance lambda by one projected step and return it."""
        start, mass = simplex_start(self, self.lam)
        lam = modo_step(gramian, start, self.gamma, self.rho)
        simplex_put(self, self.lam, lam, mass)
        return to_tensor(lam)
