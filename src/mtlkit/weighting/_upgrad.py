"""UPGrad (Quinton & Rey, 2024; TorchJD): unconflicting projection of gradients.

Paper: [Jacobian Descent for Multi-Objective Optimization](https://arxiv.org/abs/2406.16232), arXiv 2024; code: [TorchJD](https://github.com/TorchJD/torchjd).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, exact_gramian
from mtlkit.weighting._solvers import as_numpy, cone_projection_weights, to_tensor


def upgrad_weights(gramian: Tensor, preference: Tensor | None = None) -> Tensor:
    """Weights of the preference-weighted sum of each row's projection onto the dual cone of G.

    Row i's projection onto {x : G x >= 0} is G^T v_i with v_i = argmin_{v >= e_i} v^T G G^T v
    (a K-variable non-negative QP, solved exactly by an active set); the result is
    sum_i p_i G^T v_i with p = 1/K by default (TorchJD's mean).
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    p = np.full(k, 1.0 / k) if preference is None else preference.double().cpu().numpy()
    w = np.zeros(k)
    for i in range(k):
        if p[i] == 0:
            continue
        e = np.zeros(k)
        e[i] = 1.0
        w += p[i] * cone_projection_weights(m, e)
    return to_tensor(w)


def upgrad(grads: Tensor, preference: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(d, weights): UPGrad's aggregation of the task-gradient rows."""
    w = upgrad_weights(exact_gramian(grads), preference)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("upgrad")
class UPGrad(GramianWeighting):
    r"""UPGrad: project every task gradient onto the dual cone of all of them, then average.

    $$d = \frac{1}{K} \sum_k \pi(g_k), \qquad
    \pi(g) = \arg\min_x \lVert x - g \rVert \;\; \text{subject to} \;\; g_j^\top x \ge 0 \;\; \forall j.$$

    Options: none (TorchJD's defaults: mean preference; its QP ridge $G G^\top / \mathrm{tr} + 10^{-4} I$ is
    not needed, the active-set solve handles singular Gramians exactly).

    Optimality reached (`tests/weighting/test_weighting_solvers.py`, 300 random cases, rank-deficient and
    near-duplicate rows included): worst conflict $-\min_k g_k^\top d$ below $10^{-13} \max_k \lVert g_k \rVert^2$
    on float64 rows, $10^{-9}$ on float32 rows (Gramian accumulated in float64, rows combined in float64).

    Guarantees: $g_k^\top d \ge 0$ for every $k$ (each projection lies in the convex dual cone);
    non-conflicting gradients are unchanged ($d$ = the mean of the $g_k$); the weights are $\ge 1/K$ each.
    """

    properties = frozenset(
        {"non_conflicting", "permutation_equivariant", "mean_when_equal", "pareto_stationary", "linear_under_scaling"}
    )

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """UPGrad's coefficients on the raw task gradients."""
        return upgrad_weights(gramian)
