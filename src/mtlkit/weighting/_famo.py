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

    Guarantees: effective weights are positive and sum to 1 (present tasks); with all logits equal
    they are inversely proportional to $L_k - m_k$, so every log-loss gets the same gradient weight.
    """

    handles_absent_tasks = False
    absent_note = "its logits are updated from every task's loss change between consecutive steps"
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
        self.register_buffer("prev_losses", torch.zeros(k))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.register_buffer("adam_step", torch.zeros(()))

    @torch.no_grad()
    def update_logits(self, curr_losses: Tensor) -> None:
        """One Adam step on the logits from the previous losses to ``curr_losses``."""
        curr = curr_losses.detach().to(self.logits)
        grad = famo_logit_gradient(self.logits, self.prev_losses, curr, self.min_losses)
        grad = grad + self.gamma * self.logits
        b1, b2 = self.betas
        self.adam_step += 1
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = float(self.adam_step)
        m_hat = self.exp_avg / (1 - b1**t)
        v_hat = self.exp_avg_sq / (1 - b2**t)
        self.logits -= self.lr * m_hat / (v_hat.sqrt() + self.adam_eps)

    def combine(self, losses: Tensor) -> Tensor:
        """Update the logits from the last step's loss drop, then FAMO's weighted log-loss sum."""
        if bool(self.has_prev):
            self.update_logits(losses)
        w = famo_weights(self.logits.to(losses.dtype), losses, self.min_losses.to(losses.dtype))
        self.prev_losses = losses.detach().to(self.prev_losses).clone()
        self.has_prev.fill_(True)
        self.last_weights = w.detach()
        # sum_k w_k L_k has gradient w_k w.r.t. L_k, exactly FAMO's sum_k z_k log(L_k - m_k) / c.
        return (w.detach() * losses).sum()
