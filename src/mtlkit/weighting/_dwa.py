"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, the MTAN paper, eq. 7).

Paper: [End-to-End Multi-Task Learning with Attention](https://arxiv.org/abs/1803.10704), CVPR 2019.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import positive_float
from mtlkit.weighting.base import Weighting


def dwa_weights(history: list[list[float]], temperature: float = 2.0) -> list[float]:
    """lambda_k = K exp(w_k / T) / sum_i exp(w_i / T), w_k = L_k(t-1) / L_k(t-2).

    ``history`` holds the epoch-mean training losses of the finished epochs, oldest first; with
    fewer than two epochs every weight is 1. A ratio whose older loss is not positive and finite
    (a task never seen in an epoch) counts as 1.
    """
    if len(history) < 2:
        k = len(history[-1]) if history else 0
        return [1.0] * k
    older, newer = history[-2], history[-1]
    ratios = []
    for a, b in zip(newer, older):
        ok = b > 0 and math.isfinite(a) and math.isfinite(b)
        ratios.append(a / b if ok else 1.0)
    top = max(r / temperature for r in ratios)
    exps = [math.exp(r / temperature - top) for r in ratios]
    total = sum(exps)
    return [len(ratios) * e / total for e in exps]


@WEIGHTINGS.register("dwa")
class DWA(Weighting):
    r"""L = sum_k lambda_k(t) L_k with the DWA weights of epoch t (1 for the first two epochs).

    $$\lambda_k(t) = \frac{K \exp(r_k(t-1) / T)}{\sum_i \exp(r_i(t-1) / T)}, \qquad
    r_k(t-1) = \frac{L_k(t-1)}{L_k(t-2)},$$

    with $L_k(t)$ task $k$'s mean training loss over epoch $t$.

    Options: `temperature` $T$ (2.0, the paper's value).

    A task absent from a step (no label in the batch) is dropped from it: the present tasks' weights
    are their softmax alone (they sum to the number of present tasks). A task with no label in a
    whole epoch has a NaN mean loss for that epoch (``train.loop``), and a ratio with a non-finite
    loss counts 1 (our choice: no evidence that its loss moved), so it neither gains nor loses weight
    for the two epochs that epoch enters.

    Guarantees: weights are positive and sum to $K$; a task whose loss fell more slowly over the
    last epoch gets more weight; the loss history is in the state dict (extra state), so a resumed
    run uses the same weights.
    """

    properties = frozenset({"positive_weights", "permutation_equivariant"})

    weights: Tensor

    def __init__(self, task_names: list[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        self.temperature = positive_float("temperature", temperature)
        self.history: list[list[float]] = []
        self.register_buffer("weights", torch.ones(self.num_tasks), persistent=False)

    def combine(self, losses: Tensor) -> Tensor:
        """The DWA-weighted sum of the task losses."""
        w = self.weights.to(device=losses.device, dtype=losses.dtype)
        if self.present is not None:
            # the present tasks' softmax alone: lambda_k = P exp(r_k / T) / sum_{i present} exp(r_i / T)
            w = self.select(w)
            w = w * (w.numel() / w.sum())
        self.last_weights = w.detach().clone()
        return (w * losses).sum()

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Record the epoch's mean training losses and set the next epoch's weights."""
        self.history.append([float(v) for v in mean_losses.detach().cpu().reshape(-1)])
        self.history = self.history[-2:]
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the weights of the coming epoch from the history."""
        w = dwa_weights(self.history, self.temperature) if self.history else [1.0] * self.num_tasks
        self.weights = torch.tensor(w, dtype=torch.float32, device=self.weights.device)

    def get_extra_state(self) -> dict[str, Any]:
        """The last two epochs' mean losses (plain lists)."""
        return {"history": [list(h) for h in self.history]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the loss history and the weights it implies."""
        self.history = [[float(v) for v in h] for h in state.get("history", [])]
        self._refresh()
