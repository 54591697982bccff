"""MGDA-UB (Sener & Koltun, NeurIPS 2018): the min-norm point of the convex hull of the gradients.

Paper: [Multi-Task Learning as Multi-Objective Optimization](https://arxiv.org/abs/1810.04650), NeurIPS 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, exact_gramian
from mtlkit.weighting._solvers import as_numpy, min_norm_simplex, to_tensor

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def check_normalization(normalization: str) -> None:
    """A known normalisation name, else a ConfigError listing the choices."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"weighting.options.normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}"
        )


def gradient_normalizers(gramian: Tensor, losses: Tensor | None, normalization: str) -> Tensor:
    """Per-task divisors n_k of Sener & Koltun: 1, ||g_k||, L_k or L_k ||g_k|| (float64)."""
    check_normalization(normalization)
    k = gramian.shape[0]
    norms = gramian.diagonal().clamp_min(0).sqrt()
    if normalization == "none":
        n = torch.ones(k, dtype=torch.float64)
    elif normalization == "l2":
        n = norms
    else:
        if losses is None:
            raise ValueError(f"normalization {normalization!r} needs the task losses")
        n = losses.double().cpu().abs()
        if normalization == "loss+":
            n = n * norms
    tiny = torch.finfo(torch.float64).tiny
    return torch.where(n > tiny, n, torch.ones_like(n)).double()


def mgda_weights(gramian: Tensor) -> Tensor:
    """Weights w on the simplex minimising ||sum_k w_k g_k||: an exact active-set solve on the Gramian."""
    return to_tensor(min_norm_simplex(as_numpy(gramian)))


def mgda(grads: Tensor, normalization: str = "none", losses: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(d, weights): d = sum_k w_k g_k / n_k, the min-norm element of the hull of the g_k / n_k.

    ``weights`` are the coefficients on the raw rows (w_k / n_k).
    """
    m = exact_gramian(grads)
    n = gradient_normalizers(m, losses, normalization)
    w = mgda_weights(m / torch.outer(n, n)) / n
    return combine_rows(w, grads), w


@WEIGHTINGS.register("mgda")
class MGDA(GramianWeighting):
    r"""MGDA-UB: the shared update is the min-norm convex combination of the task gradients.

    $$d = \sum_k w_k \frac{g_k}{n_k}, \qquad
    w = \arg\min_{w \in \Delta} \Big\lVert \sum_k w_k \frac{g_k}{n_k} \Big\rVert^2,$$

    $\Delta$ the probability simplex, solved exactly on the $K \times K$ Gramian. In representation
    mode this is MGDA-UB proper (gradients w.r.t. the shared representation, one backward through the
    encoder); in parameter mode it is exact MGDA.

    Options: `normalization` (`"loss+"`, the setting of the authors' released configs; one of
    `"none"`, `"l2"`, `"loss"`, `"loss+"`): the divisors $n_k$ are $1$, $\lVert g_k \rVert$, $L_k$ or
    $L_k \lVert g_k \rVert$, and the update is the min-norm point of the normalised rows,
    $\sum_k w_k g_k / n_k$ (so the guarantee below holds for every normalisation; the authors' code
    instead reused $w_k$ as loss scales on the raw losses).

    Solver: the min-norm problem is solved exactly in float64 (Lawson-Hanson active set,
    `_solvers.min_norm_simplex`) instead of the paper's Frank-Wolfe (250 iterations, stop at a $10^{-5}$
    step), which left the point off the optimum by more than $10^{-6}$ relative in 10 % of random cases.
    Optimality reached: KKT residual and duality gap $w^\top M w - \min_k (M w)_k$ below
    $3 \cdot 10^{-15} \max_k \lVert g_k \rVert^2$ over 300 random cases ($K = 3..20$, rank-deficient, strongly
    and weakly stationary, near-duplicate rows; float32 and float64 inputs;
    `tests/weighting/test_weighting_solvers.py`).

    Guarantees: $d$ has a non-negative inner product with every task gradient
    ($d^\top g_k \ge \lVert d \rVert^2 n_k \ge 0$), and $d = 0$ exactly when some convex combination of the
    (normalised) gradients vanishes (Pareto stationarity). The weights on normalised rows sum to 1.
    """

    properties = frozenset({"non_conflicting", "permutation_equivariant", "pareto_stationary"})

    def __init__(self, task_names: list[str], normalization: str = "loss+") -> None:
        super().__init__(task_names)
        check_normalization(normalization)
        self.normalization = normalization

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Min-norm weights of the normalised gradients, expressed on the raw rows."""
        n = gradient_normalizers(gramian, losses, self.normalization)
        return mgda_weights(gramian / torch.outer(n, n)) / n
