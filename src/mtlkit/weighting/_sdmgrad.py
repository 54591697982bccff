"""SDMGrad (Xiao, Ban & Ji, NeurIPS 2023): stochastic direction-oriented multi-objective gradient.

Paper: [Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms](https://arxiv.org/abs/2305.18409), NeurIPS 2023.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, positive_float, simplex_put, simplex_start
from mtlkit.weighting._solvers import as_numpy, project_simplex, to_tensor
from mtlkit.weighting.gradients import gramian


def sdmgrad_inner(
    gramian: Tensor, w: np.ndarray, lam: float = 0.3, n_iter: int = 20, lr: float = 10.0, momentum: float = 0.5
) -> np.ndarray:
    """n_iter projected heavy-ball steps on min_{w in simplex} w^T M w / 2 + lam w^T M 1 / K.

    M is the Gramian divided by the squared mean gradient norm (the authors' normalisation, so the
    step is scale-free). Each step moves along M w + lam M 1 / K = G G^T w + lam G g0 (the
    objective's gradient, as in the authors' code and TorchJD), with their lr 10 and momentum 0.5
    (torch SGD's momentum form). LibMTL's SDMGrad steps along half of that (its lr 10 on
    w^T M w + ... without the 1/2 is the authors' lr 5). With these the 20 steps need not converge
    to the QP's minimiser (they often end at a vertex); a small lr and many steps do. ``w`` is the
    warm start.
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
    m = m / (float(norms.mean()) ** 2 + 1e-8)
    target = m.mean(axis=1)
    w = w.astype(np.float64).copy()
    buf = np.zeros(k)
    for i in range(n_iter):
        grad = m @ w + lam * target
        buf = grad if i == 0 else momentum * buf + grad
        w = project_simplex(w - lr * buf)
    return w


def sdmgrad_weights(w: np.ndarray, lam: float = 0.3) -> Tensor:
    """Coefficients on the raw rows of d = (G^T w + lam g0) / (1 + lam), g0 the mean gradient."""
    return to_tensor((w + lam / w.shape[0]) / (1.0 + lam))


def sdmgrad(grads: Tensor, lam: float = 0.3, n_iter: int = 20) -> tuple[Tensor, Tensor]:
    """(d, weights): one SDMGrad step from the uniform warm start."""
    k = grads.shape[0]
    w = sdmgrad_weights(sdmgrad_inner(gramian(grads), np.full(k, 1.0 / k), lam, n_iter), lam)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("sdmgrad")
class SDMGrad(GramianWeighting):
    r"""SDMGrad: MGDA's min-norm problem regularised towards the mean gradient, solved by projected SGD.

    $$w \approx \arg\min_{w \in \Delta} \; \frac{1}{2} \lVert G^\top w \rVert^2 + \lambda \, (G^\top w)^\top g_0,
    \qquad d = \frac{G^\top w + \lambda g_0}{1 + \lambda},$$

    with $g_0$ the mean gradient, by `n_iter` projected momentum steps along $G G^\top w + \lambda G g_0$
    (the authors' step; LibMTL's is half of it), warm-started from the previous step's $w$. The paper
    draws three independent batches (one for $G^\top w$, two for an unbiased $G G^\top$); here all three
    are the step's batch (the deterministic variant).

    Options: `lam` $\lambda$ (0.3, LibMTL's NYUv2 value), `n_iter` (20), `lr` (10, the authors' inner step
    size). The weights $w$ are a buffer (checkpointed).

    A step without some tasks (no label in the batch) solves the problem of the present tasks alone,
    warm-started from their share of $w$ renormalised to the simplex; the new weights get back the
    mass those tasks held, so the absent tasks' weights are unchanged and $w$ stays on the simplex.

    Guarantees: $w$ stays on the simplex; equal gradients give that gradient (the mean);
    $\lambda \to \infty$ gives the mean gradient.
    """

    properties = frozenset({"permutation_equivariant", "mean_when_equal"})

    w: Tensor

    def __init__(self, task_names: list[str], lam: float = 0.3, n_iter: int = 20, lr: float = 10.0) -> None:
        super().__init__(task_names)
        self.lam = positive_float("lam", lam, allow_zero=True)
        if not isinstance(n_iter, int) or n_iter < 1:
            raise ConfigError(f"weighting.options.n_iter must be an integer >= 1, got {n_iter!r}")
        self.n_iter = n_iter
        self.lr = positive_float("lr", lr)
        self.register_buffer("w", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Advance w by n_iter projected steps; coefficients of (G^T w + lam g0) / (1 + lam)."""
        start, mass = simplex_start(self, self.w)
        w = sdmgrad_inner(gramian, start, self.lam, self.n_iter, self.lr)
        simplex_put(self, self.w, w, mass)
        return sdmgrad_weights(w, self.lam)
