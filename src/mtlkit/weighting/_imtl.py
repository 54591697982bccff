"""IMTL (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021): impartial multi-task learning.

Paper: [Towards Impartial Multi-task Learning](https://openreview.net/forum?id=IMPnRXEWpvr), ICLR 2021.
IMTL-G balances gradients (closed form), IMTL-L balances loss scales (learned); the paper's full
method is both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows, present_mask
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradients import gramian


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """IMTL-G's closed form: alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:K}.

    D rows g_1 - g_k, U rows u_1 - u_k (u = unit gradients), k = 2..K; all entries are inner
    products, so only the Gramian is needed. A singular D U^T uses the least-squares solution.
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    if k == 1:
        return to_tensor(np.ones(1))
    norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    mu = m * inv[None, :]  # mu[i, j] = g_i . u_j
    g1_u = mu[0, 0] - mu[0, 1:]
    du = (mu[0, 0] - mu[0, 1:])[None, :] - (mu[1:, 0:1] - mu[1:, 1:])
    alpha = np.linalg.lstsq(du.T, g1_u, rcond=None)[0]
    return to_tensor(np.concatenate([[1.0 - alpha.sum()], alpha]))


def imtl_g(grads: Tensor) -> tuple[Tensor, Tensor]:
    """(d, weights): the IMTL-G update sum_k alpha_k g_k (equal projections on every unit gradient)."""
    w = imtl_g_weights(gramian(grads))
    return combine_rows(w, grads), w


def imtl_l_loss(losses: Tensor, scales: Tensor) -> Tensor:
    """sum_k exp(s_k) L_k - s_k: IMTL-L's scaled losses (each scaled loss tends to 1)."""
    return (torch.exp(scales) * losses - scales).sum()


@WEIGHTINGS.register("imtl_g")
class IMTLG(GramianWeighting):
    r"""IMTL-G: the update whose projections onto every task's unit gradient are equal.

    $d = \sum_k \alpha_k g_k$ with $\sum_k \alpha_k = 1$ and $d^\top u_k$ the same for every $k$,
    $u_k = g_k / \lVert g_k \rVert$ (closed form: with $D$ the differences $g_1 - g_k$ and $U$ those of
    $u_1 - u_k$, $\alpha_{2:K} = g_1^\top U^\top (D U^\top)^{-1}$).

    Options: none.

    Guarantees: $d^\top g_k / \lVert g_k \rVert$ is the same for every $k$ (when $D U^\top$ is invertible),
    and the weights sum to 1; for two orthogonal gradients of norms $a, b$ the update is
    $(b g_1 + a g_2) / (a + b)$.
    """

    display_name = "IMTL-G"

    properties = frozenset({"permutation_equivariant", "mean_when_equal"})

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """IMTL-G's closed-form weights."""
        return imtl_g_weights(gramian)


@WEIGHTINGS.register("imtl_l")
class IMTLL(Weighting):
    r"""IMTL-L alone (loss level): L = sum_k exp(s_k) L_k - s_k with learned s_k (init 0).

    $$L = \sum_k \left(e^{s_k} L_k - s_k\right)$$


    Guarantees: for fixed $L_k$ the optimum is $s_k = -\log L_k$, so every scaled loss tends to 1;
    the weights $e^{s_k}$ are positive. A task whose loss is exactly 0 in a batch contributes nothing.
    """

    display_name = "IMTL-L"

    properties = frozenset({"positive_weights", "permutation_equivariant", "loss_scale_invariant_at_equilibrium"})

    def __init__(self, task_names: list[str]) -> None:
        super().__init__(task_names)
        self.scales = nn.Parameter(torch.zeros(self.num_tasks))

    def combine(self, losses: Tensor) -> Tensor:
        """The IMTL-L scaled loss sum."""
        mask = present_mask(losses).to(losses.dtype)
        s = self.select(self.scales).to(losses.dtype) * mask
        self.last_weights = torch.exp(s).detach()
        return imtl_l_loss(losses * mask, s)


@WEIGHTINGS.register("imtl")
class IMTL(Weighting):
    r"""Full IMTL (the paper's hybrid): IMTL-G on the gradients of the IMTL-L scaled losses.

    The scaled losses $e^{s_k} L_k - s_k$ have shared gradients $e^{s_k} g_k$; IMTL-G combines those.
    The scales are parameters of this module: `aggregate` writes their gradient $e^{s_k} L_k - 1$
    into `scales.grad` (the step zeroes gradients before and runs the optimiser after).
    Task-specific parameters get their unscaled loss gradient (the step's contract).

    A step without some tasks (no label in the batch) is IMTL on the present tasks alone: their
    scales, and a gradient for their scales only (the absent tasks' entries of `scales.grad` are 0).

    Guarantees: equal projections of $d$ onto every unit task gradient (IMTL-G's, unchanged by the
    positive scales); the weights $\alpha_k e^{s_k}$ on the raw rows are reported.
    """

    properties = frozenset({"permutation_equivariant", "mean_when_equal"})

    needs_gradients = True
    gramian_only = True

    def __init__(self, task_names: list[str]) -> None:
        super().__init__(task_names)
        self.scales = nn.Parameter(torch.zeros(self.num_tasks))

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """IMTL-G on the scaled gradients; accumulates the IMTL-L gradient of the scales."""
        return combine_rows(self.weights_from_gramian(gramian(grads), losses), grads)

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The weights on the raw rows, from the Gramian; accumulates the IMTL-L gradient of the scales."""
        scales = self.select(self.scales.detach())
        factor = torch.exp(scales.double().cpu())
        m = gramian.double().cpu()
        alpha = imtl_g_weights(m * torch.outer(factor, factor))
        w = alpha * factor
        mask = present_mask(losses).to(self.scales.dtype)
        scale_grad = (torch.exp(scales) * losses.detach().to(self.scales) - 1.0) * mask
        scale_grad = self.expand(scale_grad)
        self.scales.grad = scale_grad if self.scales.grad is None else self.scales.grad + scale_grad
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return w
