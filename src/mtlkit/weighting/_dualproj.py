"""DualProj: GEM's dual-cone projection (Lopez-Paz & Ranzato, NeurIPS 2017) as a multi-task aggregator.

Paper: [Gradient Episodic Memory for Continual Learning](https://arxiv.org/abs/1706.08840), NeurIPS 2017; as an
aggregator in [TorchJD](https://github.com/TorchJD/torchjd) (Quinton & Rey, [Jacobian Descent for Multi-Objective
Optimization](https://arxiv.org/abs/2406.16232), 2024).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, exact_gramian
from mtlkit.weighting._solvers import as_numpy, cone_projection_weights, to_tensor


def dualproj_weights(gramian: Tensor) -> Tensor:
    """Weights v = argmin_{v >= 1/K} v^T G G^T v: G^T v is the projection of the mean gradient onto {x : G x >= 0}.

    GEM's quadratic program in its dual form (K variables), solved exactly by an active set.
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    return to_tensor(cone_projection_weights(m, np.full(k, 1.0 / k)))


def dualproj(grads: Tensor) -> tuple[Tensor, Tensor]:
    """(d, weights): the projection of the mean gradient onto the dual cone of the task gradients."""
    w = dualproj_weights(exact_gramian(grads))
    return combine_rows(w, grads), w


@WEIGHTINGS.register("dualproj")
class DualProj(GramianWeighting):
    r"""DualProj: the closest vector to the mean gradient that conflicts with no task gradient.

    $$d = \arg\min_x \Big\lVert x - \frac{1}{K} \sum_k g_k \Big\rVert
    \quad \text{subject to} \quad g_k^\top x \ge 0 \;\; \forall k$$

    (GEM's projection), found from the $K \times K$ Gramian with an exact active set
    (`_solvers.nonneg_qp`; worst conflict below $10^{-13} \max_k \lVert g_k \rVert^2$ on float64 rows,
    $10^{-9}$ on float32 rows over `tests/weighting/test_weighting_solvers.py`'s cases).

    Options: none (TorchJD's mean preference; its QP ridge is not needed).

    Guarantees: $g_k^\top d \ge 0$ for every $k$; non-conflicting gradients give the mean unchanged; the
    weights are $\ge 1/K$; opposite gradients give 0 (stationary at a Pareto-stationary point).
    """

    properties = frozenset({"non_conflicting", "permutation_equivariant", "mean_when_equal", "pareto_stationary"})

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """DualProj's coefficients on the raw task gradients."""
        return dualproj_weights(gramian)
