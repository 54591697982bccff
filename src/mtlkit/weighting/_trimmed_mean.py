"""Coordinate-wise trimmed mean (Yin, Chen, Kannan & Bartlett, ICML 2018) over task gradients.

Paper: [Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates](https://arxiv.org/abs/1803.01498),
ICML 2018; as a multi-task aggregator in [TorchJD](https://github.com/TorchJD/torchjd).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import check_grads, work_dtype
from mtlkit.weighting.base import Weighting


def trimmed_mean(grads: Tensor, trim: int = 1) -> tuple[Tensor, Tensor]:
    """(d, weights): per coordinate, drop the ``trim`` largest and smallest entries, average the rest.

    ``weights``: the fraction of coordinates where each row was kept, divided by K - 2 trim (the
    weights of an equal-mean over the kept entries; they sum to 1 when every coordinate keeps K - 2 t).
    """
    k = grads.shape[0]
    if not 0 <= 2 * trim < k:
        raise ValueError(f"trimmed_mean: trim={trim} needs more than {2 * trim} rows, got {k}")
    g = grads.to(work_dtype(grads))
    if trim == 0:
        return g.mean(0), torch.full((k,), 1.0 / k, dtype=torch.float64)
    order = g.argsort(dim=0, stable=True)
    kept = order[trim : k - trim]
    d = torch.gather(g, 0, kept).mean(0)
    counts = torch.zeros(k, dtype=torch.float64, device=g.device)
    counts.scatter_add_(0, kept.reshape(-1), torch.ones(kept.numel(), dtype=torch.float64, device=g.device))
    weights = counts / (max(g.shape[1], 1) * (k - 2 * trim))
    return d, weights.cpu()


@WEIGHTINGS.register("trimmed_mean")
class TrimmedMean(Weighting):
    r"""Trimmed mean: each coordinate of the update is the mean of the task gradients' middle values.

    $d_i$ is the mean of $g_{1i}, \dots, g_{Ki}$ without their $t$ smallest and $t$ largest values.

    Options: `trim` $t$ (1: with $K = 3$ tasks this is the coordinate-wise median); needs $K \ge 2 t + 1$.

    A step without some tasks (no label in the batch) trims the $K'$ present gradients by the largest
    $t' \le t$ they allow ($K' \ge 2 t' + 1$): with one or two present tasks, their mean.

    Guarantees: each coordinate lies between the $(t+1)$-th smallest and largest task values, so $t$
    outlying tasks cannot move it out of the others' range; equal gradients give that gradient;
    the task order does not matter.
    """

    needs_gradients = True
    properties = frozenset({"permutation_equivariant", "mean_when_equal"})
    min_tasks = 3

    def __init__(self, task_names: list[str], trim: int = 1) -> None:
        super().__init__(task_names)
        if not isinstance(trim, int) or isinstance(trim, bool) or trim < 0:
            raise ConfigError(f"weighting.options.trim must be an integer >= 0, got {trim!r}")
        if self.num_tasks < 2 * trim + 1:
            raise ConfigError(
                f"weighting trimmed_mean needs at least 2 trim + 1 = {2 * trim + 1} tasks, got {self.num_tasks}"
            )
        self.trim = trim

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The coordinate-wise trimmed mean of the task gradients."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        d, w = trimmed_mean(grads, min(self.trim, (self.num_tasks - 1) // 2))
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return d
