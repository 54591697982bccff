"""CAGrad (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021): conflict-averse gradient descent.

Paper: [Conflict-Averse Gradient Descent for Multi-task Learning](https://arxiv.org/abs/2110.14048), NeurIPS 2021.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, positive_float
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.gradients import gramian

RESCALES = (0, 1, 2)


def _dual_simplex(m: np.ndarray, c: float) -> np.ndarray:
    """argmin_{w in simplex} w^T m 1/K + c ||g0|| sqrt(w^T m w): CAGrad's dual (SLSQP, float64)."""
    k = m.shape[0]
    b = m.mean(axis=1)
    g0_norm = float(np.sqrt(max(m.mean(), 0.0)))
    rho = c * g0_norm
    eps = 1e-16 * max(float(np.trace(m)), 1e-300)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        """The dual objective and its gradient."""
        mw = m @ w
        root = np.sqrt(max(w @ mw, 0.0) + eps)
        return float(w @ b + rho * root), b + rho * mw / root

    start = np.full(k, 1.0 / k)
    candidates = [start] + [np.eye(k)[i] for i in range(k)]
    res = minimize(
        objective,
        start,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    if np.all(np.isfinite(res.x)):
        x = np.clip(res.x, 0.0, None)
        candidates.append(x / x.sum() if x.sum() > 0 else start)
    return min(candidates, key=lambda w: objective(w)[0])


def cagrad_weights(gramian: Tensor, c: float = 0.4, rescale: int = 1) -> Tensor:
    """Weights on the raw rows of d = (g0 + c ||g0|| g_w / ||g_w||) / s, g0 the mean gradient.

    w solves the dual over the simplex; s = 1, 1 + c^2 or 1 + c for rescale 0, 1, 2.
    """
    if rescale not in RESCALES:
        raise ConfigError(f"weighting.options.rescale must be 0, 1 or 2, got {rescale!r}")
    m = as_numpy(gramian)
    k = m.shape[0]
    w = _dual_simplex(m, c)
    gw_norm = float(np.sqrt(max(w @ m @ w, 0.0)))
    g0_norm = float(np.sqrt(max(m.mean(), 0.0)))
    lam = c * g0_norm / gw_norm if gw_norm > 1e-12 * max(g0_norm, 1e-300) else 0.0
    out = np.full(k, 1.0 / k) + lam * w
    scale = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    return to_tensor(out / scale)


def cagrad(grads: Tensor, c: float = 0.4, rescale: int = 1) -> tuple[Tensor, Tensor]:
    """(d, weights): CAGrad's update for the task-gradient rows ``grads``."""
    w = cagrad_weights(gramian(grads), c, rescale)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("cagrad")
class CAGrad(GramianWeighting):
    r"""CAGrad: maximise the worst task's improvement within a ball of radius c ||g0|| around g0.

    $$d^* = \arg\max_{\lVert d - g_0 \rVert \le c \lVert g_0 \rVert} \; \min_k \; g_k^\top d,
    \qquad g_0 = \frac{1}{K} \sum_k g_k,$$

    found through the dual $\min_{w \in \Delta} \; g_w^\top g_0 + c \lVert g_0 \rVert \lVert g_w \rVert$
    ($K$ variables, on the Gramian; $g_w = \sum_k w_k g_k$) and
    $d^* = g_0 + c \lVert g_0 \rVert \, g_w / \lVert g_w \rVert$.

    Options: `c` (0.4, the paper's NYUv2/Cityscapes value), `rescale` (1: divide by $1 + c^2$, as the
    authors' code does; 0: none; 2: divide by $1 + c$).

    Guarantees (`rescale` 0): $\lVert d - g_0 \rVert \le c \lVert g_0 \rVert$, and $\min_k g_k^\top d$ is the
    largest possible in that ball; $c = 0$ gives the mean gradient.
    """

    properties = frozenset({"permutation_equivariant"})

    def __init__(self, task_names: list[str], c: float = 0.4, rescale: int = 1) -> None:
        super().__init__(task_names)
        self.c = positive_float("c", c, allow_zero=True)
        if rescale not in RESCALES:
            raise ConfigError(f"weighting.options.rescale must be 0, 1 or 2, got {rescale!r}")
        self.rescale = int(rescale)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """CAGrad's coefficients on the raw task gradients."""
        return cagrad_weights(gramian, self.c, self.rescale)
