"""ConFIG (Liu, Chen & Thuerey, ICLR 2025): conflict-free inverse gradients.

Paper: [ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks](https://arxiv.org/abs/2408.11104), ICLR 2025.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.gradients import gramian


def config_weights(gramian: Tensor) -> Tensor:
    """Weights on the raw rows of g_c = (sum_i g_i . g_u) g_u, g_u = U^+ 1 / ||U^+ 1||.

    U has the unit gradients u_i = g_i / ||g_i|| as rows; U^+ 1 = U^T (U U^T)^+ 1 is the minimum-norm
    x with u_i . x = 1 for every i (least squares when no such x exists; singular values below 1e-10
    of the largest count as 0), so g_u makes the same angle with every task gradient. All of it is
    inner products: U U^T is the cosine matrix. Zero rows are left out (weight 0).
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
    live = norms > 0
    w = np.zeros(k)
    if not live.any():
        return to_tensor(w)
    n = norms[live]
    cos = m[np.ix_(live, live)] / np.outer(n, n)
    a = np.linalg.pinv(cos, rtol=1e-10, hermitian=True) @ np.ones(int(live.sum()))
    x_sq = float(a @ cos @ a)
    if not x_sq > 1e-12:  # 1 is (numerically) orthogonal to the unit gradients' span: no common direction
        return to_tensor(w)
    coef = np.zeros(k)
    coef[live] = a / n  # g_u = G^T coef / ||x||
    length = float(np.ones(k) @ m @ coef)  # sum_i g_i . (G^T coef) = ||x|| (sum_i g_i . g_u)
    return to_tensor(coef * length / x_sq)


def config(grads: Tensor) -> tuple[Tensor, Tensor]:
    """(d, weights): ConFIG's conflict-free update."""
    w = config_weights(gramian(grads))
    return combine_rows(w, grads), w


@WEIGHTINGS.register("config")
class ConFIG(GramianWeighting):
    r"""ConFIG: move along the direction equally inclined to every unit task gradient.

    With $u_k = g_k / \lVert g_k \rVert$, the direction $g_u$ solves $u_k^\top g_u = \text{const}$ for all $k$
    (the pseudo-inverse of the unit-gradient matrix $U$ applied to the ones vector, then normalised):
    $g_u = U^{+} \mathbf{1} / \lVert U^{+} \mathbf{1} \rVert$; the update is
    $d = \left(\sum_k g_k^\top g_u\right) g_u$. Computed on the $K \times K$ Gramian (no solver: a
    $K \times K$ pseudo-inverse).

    Options: none (the paper's method without its momentum variant).

    Guarantees: when the unit gradients are linearly independent, every task gets the same cosine
    with the update, which is positive (non-conflicting); the direction does not change when a task's
    gradient is rescaled; equal gradients give their sum ($K g$).
    """

    properties = frozenset(
        {"non_conflicting_full_rank", "permutation_equivariant", "sum_when_equal", "loss_scale_invariant"}
    )

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """ConFIG's coefficients on the raw task gradients."""
        return config_weights(gramian)
