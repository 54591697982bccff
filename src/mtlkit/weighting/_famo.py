"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liu, Stone & Liu, NeurIPS 2023).

Paper: [FAMO: Fast Adaptive Multitask Optimization](https://arxiv.org/abs/2306.03792), NeurIPS 2023.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import positive_float
from mtlkit.weighting.base import Weighting


def famo_weights(logits: Tensor, losses: Tensor, min_losses: Tensor, eps: float = 1e-8) -> Tensor:
    """Effective weights z_k / (c (L_k - m_k)), c = sum_i z_i / (L_i - m_i), z = softmax(logits).

    They are the gradient of FAMO's objective sum_k z_k log(L_k - m_k) / c w.r.t. L_k, so they
    are positive and sum to 1. Tasks with L_k <= m_k (absent from the batch) get weight 0.
    """
    d = losses.detach() - min_losses
    mask = d > 0
    z = torch.softmax(logits, dim=0)
    d_safe = torch.where(mask, d + eps, torch.ones_like(d))
    ratio = torch.where(mask, z / d_safe, torch.zeros_like(d))
    return ratio / ratio.sum().clamp_min(torch.finfo(ratio.dtype).tiny)


def famo_logit_gradient(
    logits: Tensor, prev_losses: Tensor, curr_losses: Tensor, min_losses: Tensor, eps: float = 1e-8
) -> Tensor:
    """J_softmax(logits)^T delta with delta_k = log(L_k(prev) - m_k) - log(L_k(curr) - m_k).

    FAMO's logit update direction: a task whose log-loss dropped more than the others gets a
    smaller logit. Tasks absent in either step (loss <= m_k) have delta_k = 0.
    """
    dp, dc = prev_losses - min_losses, curr_losses - min_losses
    ok = (dp > 0) & (dc > 0)
    one = torch.ones_like(dp)
    delta = torch.where(
        ok, torch.log(torch.where(ok, dp, one) + eps) - torch.log(torch.where(ok, dc, one) + eps), torch.zeros_like(dp)
    )
    z = torch.softmax(logits, dim=0)
    return z * (delta - (z * delta).sum())


@WEIGHTINGS.register("famo")
class FAMO(Weighting):
    r"""L = sum_k z_k log(L_k - m_k) / c with z = softmax(xi): balanced loss decrease at O(1) cost.

    $$L = \frac{1}{c} \sum_k z_k \log(L_k - m_k), \qquad z = \operatorname{softmax}(\xi).$$


    The logits $\xi$ are updated by FAMO's own Adam (lr 0.025, weight decay $\gamma$) along
    $J_{\text{softmax}}^\top \delta$, $\delta_k$ the drop of task $k$'s log-loss over one step. The paper
    measures that drop on the same batch after the update (one extra forward); here the loss interface
    sees only `combine(losses)`, so each call first updates $\xi$ from the previous call's losses to this
    call's (the drop over the previous step, measured on the next batch), then weighs this batch.
    The logits and their Adam moments are buffers (state dict), not optimiser parameters.

    Options: `lr` (0.025, the paper's `w_lr`), `gamma` (0.01, weight decay on $\xi$; the official code's
    default), `min_losses` (0.0, the known lower bounds $m_k$).

    A step without some tasks (no label in the batch) weighs the present tasks by the softmax of their
    logits alone, and updates only the logits of the tasks present in both that step and the one
    before (their loss drop over one step is measured; the others' logits and Adam moments are left
    as they are; the Adam step count, one for all logits, counts every update).

    Guarantees: effective weights are positive and sum to 1 (present tasks); with all logits equal
    they are inversely proportional to $L_k - m_k$, so every log-loss gets the same gradient weight.
    """

    properties = frozenset({"positive_weights", "permutation_equivariant", "loss_scale_invariant"})

    logits: Tensor
    min_losses: Tensor
    prev_losses: Tensor
    has_prev: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_step: Tensor

    def __init__(self, task_names: list[str], lr: float = 0.025, gamma: float = 0.01, min_losses: float = 0.0) -> None:
        super().__init__(task_names)
        self.lr = positive_float("lr", lr)
        self.gamma = positive_float("gamma", gamma, allow_zero=True)
        self.betas, self.adam_eps = (0.9, 0.999), 1e-8
        k = self.num_tasks
        self.register_buffer("logits", torch.zeros(k))
        self.register_buffer("min_losses", torch.full((k,), float(min_losses)))
        #: the previous step's losses; NaN for a task absent from it
        self.register_buffer("prev_losses", torch.zeros(k))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.register_buffer("adam_step", torch.zeros(()))

    @torch.no_grad()
    def update_logits(self, curr_losses: Tensor) -> None:
        """One Adam step on the logits from the previous losses to ``curr_losses`` (the step's tasks').

        Only the tasks also present in the previous step take part (class docstring).
        """
        curr = curr_losses.detach().to(self.logits)
        idx = torch.tensor(self.present_index(), device=self.logits.device)
        prev = self.prev_losses[idx]
        both = ~torch.isnan(prev)
        if not bool(both.any()):
            return
        if bool(both.all()) and idx.numel() == self.all_tasks:
            rows: Tensor | slice = slice(None)
        else:
            rows, prev, curr = idx[both], prev[both], curr[both]
        logits = self.logits[rows]
        grad = famo_logit_gradient(logits, prev, curr, self.min_losses[rows])
        grad = grad + self.gamma * logits
        b1, b2 = self.betas
        self.adam_step += 1
        exp_avg, exp_avg_sq = self.exp_avg[rows], self.exp_avg_sq[rows]
        exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = float(self.adam_step)
        m_hat = exp_avg / (1 - b1**t)
        v_hat = exp_avg_sq / (1 - b2**t)
        self.exp_avg[rows], self.exp_avg_sq[rows] = exp_avg, exp_avg_sq
        self.logits[rows] = logits - self.lr * m_hat / (v_hat.sqrt() + self.adam_eps)

    def combine(self, losses: Tensor) -> Tensor:
        """Update the logits from the last step's loss drop, then FAMO's weighted log-loss sum."""
        if bool(self.has_prev):
            self.update_logits(losses)
        logits, min_losses = self.select(self.logits), self.select(self.min_losses)
        w = famo_weights(logits.to(losses.dtype), losses, min_losses.to(losses.dtype))
        prev = torch.full_like(self.prev_losses, float("nan"))
        prev[torch.tensor(self.present_index(), device=prev.device)] = losses.detach().to(prev)
        self.prev_losses = prev
        self.has_prev.fill_(True)
        self.last_weights = w.detach()
        # sum_k w_k L_k has gradient w_k w.r.t. L_k, exactly FAMO's sum_k z_k log(L_k - m_k) / c.
        return (w.detach() * losses).sum()
