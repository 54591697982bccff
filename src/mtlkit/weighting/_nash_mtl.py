"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022).

Paper: [Multi-Task Learning as a Bargaining Game](https://arxiv.org/abs/2202.01017), ICML 2022.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, positive_float
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.gradients import gramian


def _solve_bargaining(m: np.ndarray, ridge: float, max_iter: int, tol: float) -> np.ndarray:
    """alpha > 0 with (m + r I) alpha = 1 / alpha, by damped Newton on a convex potential.

    alpha is the minimiser of f(a) = a^T (m + r I) a / 2 - sum_k log a_k (its gradient is
    (m + r I) a - 1/a). f is self-concordant, so Newton steps damped by 1 / (1 + lambda) (lambda
    the Newton decrement) stay positive and converge globally, quadratically near the end.
    The ridge r = ridge * mean(diag m) makes the problem solvable when the gradients are linearly
    dependent (no Nash solution; with two opposite gradients the update is then exactly 0).
    """
    k = m.shape[0]
    scale = float(np.mean(np.diag(m)))
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros(k)
    mr = m / scale + ridge * np.eye(k)
    a = 1.0 / np.sqrt(np.diag(mr))
    for _ in range(max_iter):
        grad = mr @ a - 1.0 / a
        hess = mr + np.diag(1.0 / (a * a))
        step = -np.linalg.solve(hess, grad)
        dec = float(np.sqrt(max(-float(grad @ step), 0.0)))
        if dec < tol:
            break
        a = a + step / (1.0 + dec) if dec > 0.25 else a + step
        a = np.maximum(a, 1e-300)
    return a / np.sqrt(scale)


def nash_mtl_weights(
    gramian: Tensor,
    normalize: bool = False,
    max_norm: float = 0.0,
    ridge: float = 1e-12,
    max_iter: int = 500,
    tol: float = 1e-10,
) -> Tensor:
    """The Nash bargaining weights: alpha > 0 solving (G G^T) alpha = 1 / alpha elementwise.

    ``normalize``: solve on G G^T / ||G G^T||_F (weights multiplied by sqrt(||G G^T||_F)). This is
    *not* the authors' normalisation: their code divides the Gramian by ||G G^T||_F but multiplies
    the constraint by the same factor, so it cancels and their update is this function's with
    ``normalize=False`` (norm sqrt(K) before the clip, whatever the gradients' scale).
    ``max_norm`` > 0: shrink the weights so ||sum_k alpha_k g_k|| <= max_norm (the authors clip
    the shared gradient norm to 1).
    """
    m = as_numpy(gramian)
    s = float(np.linalg.norm(m)) if normalize else 1.0
    if s <= 0 or not np.isfinite(s):
        return to_tensor(np.zeros(m.shape[0]))
    alpha = _solve_bargaining(m / s, ridge, max_iter, tol)
    if max_norm > 0:
        norm = float(np.sqrt(max(alpha @ m @ alpha, 0.0)))
        if norm > max_norm:
            alpha = alpha * (max_norm / norm)
    return to_tensor(alpha)


def nash_mtl(grads: Tensor, normalize: bool = False, max_norm: float = 0.0) -> tuple[Tensor, Tensor]:
    """(d, weights): d = G^T alpha with the Nash bargaining weights alpha."""
    w = nash_mtl_weights(gramian(grads), normalize=normalize, max_norm=max_norm)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("nash_mtl")
class NashMTL(GramianWeighting):
    r"""Nash-MTL: the Nash bargaining solution among the tasks' improvements.

    $$d = G^\top \alpha \quad \text{with} \quad \alpha_k \, (G G^\top \alpha)_k = 1 \;\; \forall k.$$

    The paper solves the fixed point by a sequence of convex programs (CCP with cvxpy, 20
    iterations). Here the same fixed point is the unique minimiser of the strictly convex

    $$\frac{1}{2} \alpha^\top G G^\top \alpha - \sum_k \log \alpha_k,$$

    solved to machine precision by damped Newton on the $K \times K$ Gramian (no cvxpy). The weights are
    updated every step.

    Options: `normalize` (False, the authors' update: in their code the division of $G G^\top$ by its
    Frobenius norm cancels inside the constraint, so $\lVert d \rVert = \sqrt{K}$ before the clip at any
    gradient scale; True solves on $G G^\top / \lVert G G^\top \rVert_F$, which multiplies $d$ by
    $\sqrt{\lVert G G^\top \rVert_F}$, an mtlkit variant that scales the step with the gradients),
    `max_norm` (1.0, the authors' clip of the shared update's norm; 0 disables).

    Guarantees: $\alpha_k > 0$ and $\alpha_k (G G^\top \alpha)_k = c$ for every $k$ ($c = 1$, or
    $\lVert G G^\top \rVert_F$ with `normalize`), i.e. $g_k^\top d = c / \alpha_k > 0$: every task improves,
    by the proportional-fairness amounts; then $\lVert d \rVert \le$ `max_norm`.
    """

    display_name = "Nash-MTL"

    properties = frozenset({"non_conflicting_full_rank", "permutation_equivariant"})

    def __init__(self, task_names: list[str], normalize: bool = False, max_norm: float = 1.0) -> None:
        super().__init__(task_names)
        self.normalize = bool(normalize)
        self.max_norm = positive_float("max_norm", max_norm, allow_zero=True)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The bargaining weights (normalised and clipped as configured)."""
        return nash_mtl_weights(gramian, normalize=self.normalize, max_norm=self.max_norm)
