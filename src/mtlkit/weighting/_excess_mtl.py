"""ExcessMTL (He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, ICML 2024): robust multi-task learning by excess risks.

Paper: [Robust Multi-Task Learning with Excess Risks](https://arxiv.org/abs/2402.02009), ICML 2024.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import check_grads, combine_rows, positive_float, work_dtype
from mtlkit.weighting.base import Weighting


def excess_risks(grads: Tensor, grad_sq_sum: Tensor) -> Tensor:
    """r_k = g_k^T H_k^{-1} g_k with the diagonal AdaGrad preconditioner H_k = sqrt(sum_t g_{k,t}^2 + 1e-7).

    A second-order estimate of how far task k's loss is from its optimum (its excess risk), with the
    accumulated squared gradients (including this step's) as the curvature estimate.
    """
    return (grads * grads / torch.sqrt(grad_sq_sum + 1e-7)).sum(1)


def excess_mtl_update(
    weights: Tensor, risks: Tensor, initial: Tensor, step_size: float = 1e-2, *, total: float | None = None
) -> Tensor:
    """w <- w exp(eta r / r_0), renormalised to sum to ``total`` (default K): exponentiated gradient ascent on the
    excess risks. A task without a first-step risk (r_0 = 0) keeps its relative weight."""
    ok = initial > 0
    rel = torch.where(ok, risks / torch.where(ok, initial, torch.ones_like(initial)), torch.zeros_like(risks))
    w = weights * torch.exp(step_size * rel)
    return w / w.sum() * (weights.numel() if total is None else total)


@WEIGHTINGS.register("excess_mtl")
class ExcessMTL(Weighting):
    r"""ExcessMTL: up-weight the tasks farthest from their own optimum, not those with the largest loss.

    Each step estimates task $k$'s excess risk
    $r_k = g_k^\top \operatorname{diag}\big(\sqrt{\textstyle\sum_t g_t^2}\big)^{-1} g_k$ (AdaGrad-style
    curvature from the accumulated squared gradients), divides it by its first-step value $r_k(0)$
    (scale-free), and updates the loss weights by exponentiated gradient,
    $w_k \leftarrow w_k \exp(\eta \, r_k / r_k(0))$, normalised to sum to $K$. The update is
    $d = \sum_k w_k g_k$. Its weights need each task's gradient, so it is a gradient-level method here.

    Options: `step_size` $\eta$ (1e-2, the authors' `robust_step_size`). Parameter mode only (the
    accumulated squared gradients are per parameter). State (accumulator, $r(0)$, weights) is
    checkpointed.

    A step without some tasks (no label in the batch) accumulates and updates the present tasks only:
    a task's $r_k(0)$ is its risk at the first step it is present in (its weight does not move then),
    the present weights keep the sum they had (so the absent tasks' weights are unchanged and all
    still sum to $K$), and the update combines them rescaled to sum to the number of present tasks,
    as the method would on those tasks alone.

    Guarantees: weights are positive and sum to $K$; the first step is the equal update; the weights
    do not change when one task's loss is multiplied by a constant ($r_k / r_k(0)$ is scale-free, up to
    the 1e-7 inside the square root).
    """

    needs_gradients = True
    supports_representation = False
    properties = frozenset({"permutation_equivariant", "sum_when_equal"})

    loss_weights: Tensor
    initial: Tensor

    def __init__(self, task_names: list[str], step_size: float = 1e-2) -> None:
        super().__init__(task_names)
        self.step_size = positive_float("step_size", step_size)
        self.register_buffer("loss_weights", torch.ones(self.num_tasks, dtype=torch.float64))
        self.register_buffer("initial", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.grad_sq_sum: Tensor | None = None

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """Accumulate, estimate the excess risks, update the weights (after the first step), combine."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        g = grads.to(work_dtype(grads))
        sq = g * g
        if self.present is None:
            if self.grad_sq_sum is None or self.grad_sq_sum.shape != g.shape:
                self.grad_sq_sum = sq
            else:
                self.grad_sq_sum = self.grad_sq_sum.to(sq) + sq
            acc = self.grad_sq_sum
        else:
            if self.grad_sq_sum is None or self.grad_sq_sum.shape[1] != g.shape[1]:
                self.grad_sq_sum = sq.new_zeros(self.all_tasks, g.shape[1])
            acc = self.select(self.grad_sq_sum).to(sq) + sq
            self.put(self.grad_sq_sum, acc)
        risks = excess_risks(g, acc).double().cpu()
        initial = self.select(self.initial).cpu()
        fresh = ~(initial > 0)  # tasks in their first step: their risk becomes r_0, their weight stays
        if bool(fresh.all()):
            self.put(self.initial, risks)
        else:
            weights = self.select(self.loss_weights).cpu()
            total = None if self.present is None else float(weights.sum())
            new = excess_mtl_update(weights, risks, initial, self.step_size, total=total)
            self.put(self.loss_weights, new)
            self.put(self.initial, torch.where(fresh, risks, initial))
        w = self.select(self.loss_weights).detach().cpu()
        if self.present is not None:
            w = w * (w.numel() / w.sum())
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return combine_rows(w, grads)

    def get_extra_state(self) -> dict[str, Any]:
        """The accumulated squared gradients (a tensor, or None before the first step)."""
        return {"grad_sq_sum": self.grad_sq_sum}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the accumulator."""
        self.grad_sq_sum = state.get("grad_sq_sum")
