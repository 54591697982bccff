"""FairGrad (Ban & Ji, ICML 2024): alpha-fair resource allocation among task gradients.

Paper: [Fair Resource Allocation in Multi-Task Learning](https://arxiv.org/abs/2402.15638), ICML 2024.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, positive_float
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.gradients import gramian


def fairgrad_weights(gramian: Tensor, alpha: float = 1.0) -> Tensor:
    """w > 0 solving (G G^T) w = w^(-1/alpha) elementwise, by scipy's bounded least squares.

    The update d = G^T w then gives every task the utility g_k . d = w_k^(-1/alpha), the alpha-fair
    allocation (alpha = 1: proportional fairness, Nash-MTL's condition; alpha -> inf: max-min).
    As the authors do, the residual M w - w^(-1/alpha) is minimised from w = 1/K with w >= 0
    (scipy's trust-region-reflective ``least_squares``); a zero Gramian gives w = 0.
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    scale = float(np.trace(m)) / k
    if not np.isfinite(scale) or scale <= 0:
        return to_tensor(np.zeros(k))
    # Solve on M / s: w' = s^(alpha / (alpha + 1)) w solves the scaled equation, so the solver sees O(1) numbers.
    ms = m / scale

    def residual(w: np.ndarray) -> np.ndarray:
        """(M / s) w - w^(-1/alpha)."""
        return ms @ w - np.power(np.maximum(w, 1e-300), -1.0 / alpha)

    def jacobian(w: np.ndarray) -> np.ndarray:
        """d residual / d w."""
        return ms + np.diag(np.power(np.maximum(w, 1e-300), -1.0 / alpha - 1.0) / alpha)

    res = least_squares(
        residual,
        np.full(k, 1.0 / k),
        jac=jacobian,
        bounds=(1e-12, np.inf),
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
        max_nfev=1000,
    )
    w = res.x * scale ** (-alpha / (alpha + 1.0))
    return to_tensor(w)


def fairgrad(grads: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """(d, weights): FairGrad's update G^T w."""
    w = fairgrad_weights(gramian(grads), alpha)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("fairgrad")
class FairGrad(GramianWeighting):
    r"""FairGrad: the update whose per-task improvements g_k . d form the alpha-fair allocation.

    $$d = G^\top w \quad \text{with} \quad (G G^\top w)_k = w_k^{-1/\alpha} \;\; \forall k,$$

    solved on the $K \times K$ Gramian with scipy's `least_squares` (the authors' solver).

    Options: `alpha` (1.0, LibMTL's default; the paper sweeps 0.5 to 10, and $\alpha = 1$ recovers the
    Nash-MTL condition without its normalisation).

    Guarantees: $w_k > 0$ and $g_k^\top d = w_k^{-1/\alpha} > 0$ for every task when $G$ has full row rank
    (non-conflicting); the weights permute with the tasks.
    """

    properties = frozenset({"non_conflicting_full_rank", "permutation_equivariant"})

    def __init__(self, task_names: list[str], alpha: float = 1.0) -> None:
        super().__init__(task_names)
        self.alpha = positive_float("alpha", alpha)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The alpha-fair weights."""
        return fairgrad_weights(gramian, self.alpha)
