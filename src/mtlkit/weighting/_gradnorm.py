"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

Paper: [GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
Networks](https://arxiv.org/abs/1711.02257), ICML 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, positive_float


def gradnorm_targets(weighted_norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float) -> Tensor:
    """GradNorm's target norms mean_k(G_k) * r_k^alpha, r_k = (L_k / L_k(0)) / mean_j(L_j / L_j(0))."""
    ok = initial_losses > 0
    ratio = torch.where(ok, losses / torch.where(ok, initial_losses, torch.ones_like(losses)), torch.ones_like(losses))
    rel = ratio / ratio.mean().clamp_min(torch.finfo(ratio.dtype).tiny)
    return weighted_norms.mean() * rel.pow(alpha)


def gradnorm_weight_gradient(
    weights: Tensor, norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float = 1.5
) -> Tensor:
    """d/dw of L_grad = sum_k |w_k ||g_k|| - target_k| with the targets held constant (as in the paper)."""
    weighted = weights * norms
    target = gradnorm_targets(weighted, losses, initial_losses, alpha)
    return torch.sign(weighted - target) * norms


@WEIGHTINGS.register("gradnorm")
class GradNorm(GramianWeighting):
    r"""GradNorm: learned task weights w_k, trained so each weighted gradient norm tracks its target.

    The shared update is $d = \sum_k w_k g_k$. The weights are parameters; `aggregate` writes the
    gradient of the GradNorm loss

    $$\sum_k \Big| \, w_k \lVert g_k \rVert - \overline{w \lVert g \rVert} \; r_k^{\alpha} \Big|,
    \qquad r_k = \frac{L_k / L_k(0)}{\frac{1}{K} \sum_j L_j / L_j(0)},$$

    into `w.grad` (the step zeroes gradients before and runs the optimiser after), and at the next call
    the weights are renormalised to sum to $K$ (clamped at 1e-4 first, so they stay positive). The paper
    measures $\lVert g_k \rVert$ at the last shared layer; here at the rows the step gives (all shared
    parameters, or the shared representation). $L_k(0)$ are the losses of the first step (a buffer).

    A step without some tasks (no label in the batch) is GradNorm on the present tasks alone: their
    weights rescaled to sum to the number of present tasks, targets from their norms and loss
    ratios, and a gradient for their weights only (the absent tasks' entries of `w.grad` are 0). A
    task's $L_k(0)$ is its loss at the first step it is present in (with a nonzero loss).

    Options: `alpha` (1.5, the paper's NYUv2 value).

    Guarantees: weights are positive and sum to $K$; the weight gradient pushes $w_k$ up exactly when
    task $k$'s weighted gradient norm is below its target.
    """

    properties = frozenset({"permutation_equivariant", "sum_when_equal"})

    initial_losses: Tensor
    initialised: Tensor

    def __init__(self, task_names: list[str], alpha: float = 1.5) -> None:
        super().__init__(task_names)
        self.alpha = positive_float("alpha", alpha, allow_zero=True)
        self.weights = nn.Parameter(torch.ones(self.num_tasks))
        #: each task's loss at the first step it was present in (0: not yet)
        self.register_buffer("initial_losses", torch.zeros(self.num_tasks))
        #: True once a step has run (kept for checkpoints of earlier versions, which have it)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def renormalise(self) -> None:
        """Clamp the weights positive and rescale them to sum to K (after each optimiser step)."""
        self.weights.clamp_(min=1e-4)
        self.weights.mul_(self.all_tasks / self.weights.sum())

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The current (renormalised) weights; accumulates the GradNorm loss gradient into w.grad."""
        initial = self.select(self.initial_losses)
        self.put(self.initial_losses, torch.where(initial == 0, losses.to(initial), initial))
        self.initialised.fill_(True)
        self.renormalise()
        w = self.select(self.weights.detach()).double().cpu()
        if self.present is not None:
            w = w * (w.numel() / w.sum())
        norms = gramian.diagonal().clamp_min(0).sqrt()
        initial = self.select(self.initial_losses).double().cpu()
        grad = gradnorm_weight_gradient(w, norms, losses.double(), initial, self.alpha).to(self.weights)
        grad = self.expand(grad)
        self.weights.grad = grad if self.weights.grad is None else self.weights.grad + grad
        return w
