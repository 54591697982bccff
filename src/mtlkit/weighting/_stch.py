"""Smooth Tchebycheff scalarization (Lin, Zhang, Yang, Zhang & Zhang, ICML 2024).

Paper: [Smooth Tchebycheff Scalarization for Multi-Objective Optimization](https://arxiv.org/abs/2402.19078), ICML 2024.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import positive_float, present_mask
from mtlkit.weighting.base import Weighting


def stch_loss(losses: Tensor, nadir: Tensor, mu: float = 1.0) -> Tensor:
    """K mu log sum_k exp(log(L_k / z_k) / mu): the smooth max of the nadir-normalised log-losses.

    Tasks with a zero loss (absent from the batch) are left out; the max is subtracted before the
    exponential (a constant, so the gradient is unchanged).
    """
    mask = present_mask(losses)
    if not bool(mask.any()):
        return losses.sum() * 0.0
    terms = torch.log(losses[mask] / nadir.to(losses)[mask]) / mu
    top = terms.detach().max()
    return losses.numel() * mu * (torch.log(torch.exp(terms - top).sum()) + top)


def stch_weights(losses: Tensor, nadir: Tensor, mu: float = 1.0) -> Tensor:
    """d STCH / d L_k = K softmax_k(log(L / z) / mu) / L_k (0 for absent tasks)."""
    ls = losses.detach()
    mask = present_mask(ls)
    out = torch.zeros_like(ls)
    if bool(mask.any()):
        terms = torch.log(ls[mask] / nadir.to(ls)[mask]) / mu
        out[mask] = ls.numel() * torch.softmax(terms, dim=0) / ls[mask]
    return out


@WEIGHTINGS.register("stch")
class STCH(Weighting):
    r"""Smooth Tchebycheff: minimise the smooth maximum of the tasks' normalised log-losses.

    $$L = K \mu \log \sum_k \exp\!\Big(\frac{\log(L_k / z_k)}{\mu}\Big),$$

    the smoothed $\max_k \log(L_k / z_k)$ (Tchebycheff with ideal point 1 in the normalised log space, the
    authors' MTL code). The nadir point $z_k$ is estimated during a warm-up: for the first `warmup_epochs`
    epochs the loss is $\sum_k \log L_k$ (every task's log-loss equally), and $z_k$ is the mean of task
    $k$'s batch losses over the last warm-up epoch. `warmup_epochs` = 5 matches the authors'
    `STCH_warmup_epoch=4` (epochs 0 to 4; losses of epoch 4 averaged).

    Options: `mu` $\mu$ (1.0, the paper's MTL smoothing), `warmup_epochs` (5).

    Guarantees: weights are positive; as $\mu \to 0$ all weight goes to the worst normalised task;
    multiplying a task's loss by $c > 0$ (during warm-up too, since $z_k$ scales with it) leaves the
    update's direction unchanged. Nadir, epoch and running sums are checkpointed.

    A step without some tasks (no label in the batch) is the scalarization of the present tasks
    alone ($K$ their number); each task's nadir is the mean of its own batch losses in the last
    warm-up epoch (1 if it had none there).
    """

    properties = frozenset({"positive_weights", "loss_scale_invariant", "permutation_equivariant"})

    def __init__(self, task_names: list[str], mu: float = 1.0, warmup_epochs: int = 5) -> None:
        super().__init__(task_names)
        self.mu = positive_float("mu", mu)
        if not isinstance(warmup_epochs, int) or isinstance(warmup_epochs, bool) or warmup_epochs < 1:
            raise ConfigError(f"weighting.options.warmup_epochs must be an integer >= 1, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.epoch = 0
        self.loss_sum = [0.0] * self.num_tasks
        self.loss_count = [0] * self.num_tasks
        self.nadir: list[float] | None = None

    def combine(self, losses: Tensor) -> Tensor:
        """Warm-up: sum of log-losses (and the nadir estimate); then the STCH scalarization."""
        if self.nadir is None:
            mask = present_mask(losses)
            if self.epoch == self.warmup_epochs - 1:
                for k, v, ok in zip(self.present_index(), losses.detach().tolist(), mask.tolist()):
                    if ok:
                        self.loss_sum[k] += v
                        self.loss_count[k] += 1
            self.last_weights = torch.where(mask, 1.0 / torch.where(mask, losses.detach(), 1.0), 0.0)
            return torch.log(losses[mask]).sum() if bool(mask.any()) else losses.sum() * 0.0
        nadir = torch.tensor([self.nadir[k] for k in self.present_index()], dtype=losses.dtype, device=losses.device)
        self.last_weights = stch_weights(losses, nadir, self.mu)
        return stch_loss(losses, nadir, self.mu)

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Count the epoch; after the last warm-up epoch, fix the nadir point."""
        self.epoch += 1
        if self.nadir is None and self.epoch >= self.warmup_epochs:
            self.nadir = [s / c if c and s > 0 else 1.0 for s, c in zip(self.loss_sum, self.loss_count)]

    def get_extra_state(self) -> dict[str, Any]:
        """Epoch count, warm-up sums and the nadir point (plain lists)."""
        return {
            "epoch": self.epoch,
            "loss_sum": list(self.loss_sum),
            "loss_count": list(self.loss_count),
            "nadir": None if self.nadir is None else list(self.nadir),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the warm-up progress and the nadir point."""
        self.epoch = int(state["epoch"])
        self.loss_sum = [float(v) for v in state["loss_sum"]]
        self.loss_count = [int(v) for v in state["loss_count"]]
        self.nadir = None if state["nadir"] is None else [float(v) for v in state["nadir"]]
