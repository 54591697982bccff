"""GO4Align (Shen, Wang, Xiao, Van Noord & Worring, NeurIPS 2024): group optimization for multi-task alignment.

Paper: [GO4Align: Group Optimization for Multi-Task Alignment](https://arxiv.org/abs/2404.06486), NeurIPS 2024.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import positive_float, present_mask, simplex_put, simplex_start
from mtlkit.weighting.base import Weighting


def kmeans_1d(values: np.ndarray, groups: int) -> np.ndarray:
    """Group labels of the exact 1-D k-means (least within-group squared error) by dynamic programming.

    In one dimension optimal groups are contiguous in sorted order, so a DP over split points is
    exact (K small). Labels are 0..groups-1 in increasing order of value.
    """
    n = values.shape[0]
    groups = max(1, min(groups, n))
    order = np.argsort(values, kind="stable")
    v = values[order]
    pre, pre2 = np.concatenate([[0.0], np.cumsum(v)]), np.concatenate([[0.0], np.cumsum(v * v)])

    def cost(i: int, j: int) -> float:
        """Within-group squared error of v[i:j]."""
        s, s2, c = pre[j] - pre[i], pre2[j] - pre2[i], j - i
        return max(s2 - s * s / c, 0.0)

    best = np.full((groups + 1, n + 1), np.inf)
    arg = np.zeros((groups + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, groups + 1):
        for j in range(g, n + 1):
            for i in range(g - 1, j):
                c = best[g - 1, i] + cost(i, j)
                if c < best[g, j] - 1e-15:
                    best[g, j], arg[g, j] = c, i
    labels_sorted = np.zeros(n, dtype=int)
    j = n
    for g in range(groups, 0, -1):
        i = arg[g, j]
        labels_sorted[i:j] = g - 1
        j = i
    labels = np.empty(n, dtype=int)
    labels[order] = labels_sorted
    return labels


def go4align_weights(losses: Tensor, probs: Tensor, groups: int = 2, step_size: float = 1e-4) -> tuple[Tensor, Tensor]:
    """(weights, new_probs): GO4Align's group weights from the present tasks' losses.

    Risk-guided indicator: (sum_j L_j / L_k) p_k with p <- p exp(-eta L) / sum (the authors' code);
    tasks are grouped by 1-D k-means on the indicators and each gets its group's mean indicator.
    Tasks with a zero loss (absent from the batch) get weight 0 and keep their p.
    """
    ls = losses.detach().double().cpu()
    mask = present_mask(ls)
    p = probs.double().cpu().clone()
    w = torch.zeros_like(ls)
    if not bool(mask.any()):
        return w, p
    p[mask] = p[mask] * torch.exp(-step_size * ls[mask])
    p = p / p.sum()
    indicator = ls[mask].sum() / ls[mask] * p[mask]
    labels = kmeans_1d(indicator.numpy(), groups)
    vals = indicator.numpy()
    means = np.array([vals[labels == g].mean() for g in labels])
    w[mask] = torch.from_numpy(means)
    return w, p


@WEIGHTINGS.register("go4align")
class GO4Align(Weighting):
    r"""GO4Align: tasks with similar risk indicators are grouped and share one loss weight.

    The indicator of task $k$ is $\left(\sum_j L_j / L_k\right) p_k$, the inverse relative loss times a
    probability $p_k$ updated by $p \leftarrow p \odot \exp(-\eta L)$ (the authors' code); the $K$
    indicators are clustered into `groups` groups (exact 1-D k-means here; the authors use k-means)
    and each task is weighted by its group's mean indicator: $L = \sum_k w_k L_k$ with the $w_k$ detached.

    Options: `groups` (2; the authors' script default is 1, which reduces to a scalar times `equal`),
    `step_size` $\eta$ (1e-4, the authors' `robust_step_size`). $p$ is a buffer (checkpointed).

    A step without some tasks (no label in the batch) groups the present tasks alone, with their
    share of $p$ renormalised to sum to 1; the updated share gets back the mass those tasks held, so
    the absent tasks' $p$ is unchanged.

    Guarantees: weights are positive; tasks in one group share a weight; a task with a relatively
    larger loss gets a smaller indicator (before grouping); the task order does not matter.
    """

    properties = frozenset({"positive_weights", "permutation_equivariant"})

    probs: Tensor

    def __init__(self, task_names: list[str], groups: int = 2, step_size: float = 1e-4) -> None:
        super().__init__(task_names)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ConfigError(f"weighting.options.groups must be an integer >= 1, got {groups!r}")
        self.groups = groups
        self.step_size = positive_float("step_size", step_size, allow_zero=True)
        self.register_buffer("probs", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def combine(self, losses: Tensor) -> Tensor:
        """The group-weighted sum of the task losses."""
        start, mass = simplex_start(self, self.probs)
        w, p = go4align_weights(losses, torch.from_numpy(start), self.groups, self.step_size)
        simplex_put(self, self.probs, p.numpy(), mass)
        w = w.to(device=losses.device, dtype=losses.dtype)
        self.last_weights = w
        return (w * losses).sum()
