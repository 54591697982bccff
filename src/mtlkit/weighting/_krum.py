"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017) over task gradients.

Paper: [Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent](https://arxiv.org/abs/1703.02757),
NeurIPS 2017; as a multi-task aggregator in [TorchJD](https://github.com/TorchJD/torchjd).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.gradients import gramian


def krum_weights(gramian: Tensor, n_byzantine: int = 0, n_selected: int = 1) -> Tensor:
    """Weights 1/m on the m rows with the smallest Krum scores, 0 elsewhere.

    score_i = sum of the K - f - 2 smallest squared distances ||g_i - g_j||^2 (j != i), from the
    Gramian as M_ii + M_jj - 2 M_ij. Ties are broken by the lower row index.
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    check_krum(k, n_byzantine, n_selected)
    diag = np.diag(m)
    dist = np.clip(diag[:, None] + diag[None, :] - 2.0 * m, 0.0, None)
    neighbours = k - n_byzantine - 2
    scores = np.array([np.sort(np.delete(dist[i], i))[:neighbours].sum() for i in range(k)])
    chosen = np.argsort(scores, kind="stable")[:n_selected]
    w = np.zeros(k)
    w[chosen] = 1.0 / n_selected
    return to_tensor(w)


def check_krum(num_tasks: int, n_byzantine: int, n_selected: int) -> None:
    """Krum needs K >= 2 f + 3 rows and 1 <= m <= K selected ones (ConfigError otherwise)."""
    if not isinstance(n_byzantine, int) or n_byzantine < 0:
        raise ConfigError(f"weighting.options.n_byzantine must be an integer >= 0, got {n_byzantine!r}")
    if not isinstance(n_selected, int) or not 1 <= n_selected <= num_tasks:
        raise ConfigError(f"weighting.options.n_selected must be an integer in [1, {num_tasks}], got {n_selected!r}")
    if num_tasks < 2 * n_byzantine + 3:
        raise ConfigError(
            f"weighting krum needs at least 2 n_byzantine + 3 = {2 * n_byzantine + 3} tasks, got {num_tasks}"
        )


def krum(grads: Tensor, n_byzantine: int = 0, n_selected: int = 1) -> tuple[Tensor, Tensor]:
    """(d, weights): the mean of the m rows Krum selects."""
    w = krum_weights(gramian(grads), n_byzantine, n_selected)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("krum")
class Krum(GramianWeighting):
    r"""Krum: keep the task gradient(s) closest to their K - f - 2 nearest neighbours, average them.

    Each row gets the score $s_k = \sum_{j \in N_k} \lVert g_k - g_j \rVert^2$ over its $K - f - 2$ nearest
    rows $N_k$; the update is the mean of the $m$ rows of lowest score. A robust aggregator: up to $f$
    outlying rows cannot pull the update. Runs on the $K \times K$ Gramian.

    Options: `n_byzantine` $f$ (0; the paper's $f$ is the number of adversarial workers, needs
    $K \ge 2 f + 3$), `n_selected` $m$ (1: Krum; $m > 1$ is Multi-Krum).

    A step without some tasks (no label in the batch) runs Krum on the $K'$ present gradients with
    the largest $f' \le f$ they allow ($K' \ge 2 f' + 3$) and $m' = \min(m, K')$; with $K' \le 2$ no
    gradient can be told apart as an outlier, and the update is the mean of the present ones.

    Guarantees: the update is the mean of $m$ of the task gradients; equal gradients give that
    gradient; the selection does not depend on the task order (up to exact ties).
    """

    properties = frozenset({"permutation_equivariant", "mean_when_equal"})
    min_tasks = 3

    def __init__(self, task_names: list[str], n_byzantine: int = 0, n_selected: int = 1) -> None:
        super().__init__(task_names)
        check_krum(self.num_tasks, n_byzantine, n_selected)
        self.n_byzantine, self.n_selected = n_byzantine, n_selected

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Krum's selection weights (with fewer tasks present than configured: the class docstring's reduction)."""
        k = gramian.shape[0]
        if self.present is None:
            return krum_weights(gramian, self.n_byzantine, self.n_selected)
        if k < 3:
            return to_tensor(np.full(k, 1.0 / k))
        return krum_weights(gramian, min(self.n_byzantine, (k - 3) // 2), min(self.n_selected, k))
