"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

Paper: [Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
Semantics](https://arxiv.org/abs/1705.07115), CVPR 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import positive_float, present_mask
from mtlkit.weighting.base import Weighting


def uncertainty_loss(losses: Tensor, log_vars: Tensor, factors: Tensor) -> Tensor:
    """sum_k c_k exp(-s_k) L_k + s_k / 2: the homoscedastic-uncertainty objective.

    ``log_vars`` s_k = log sigma_k^2; ``factors`` c_k = 1/2 gives Kendall's Gaussian-likelihood
    (regression) term 1/(2 sigma^2) L + log sigma, c_k = 1 his softmax-likelihood
    (classification) term 1/sigma^2 L + log sigma.
    """
    return (factors * torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


@WEIGHTINGS.register("uncertainty")
class Uncertainty(Weighting):
    r"""Learned task uncertainties: L = sum_k c_k exp(-s_k) L_k + s_k / 2, s_k = log sigma_k^2 learned.

    $$L = \sum_k \left(c_k e^{-s_k} L_k + \frac{s_k}{2}\right), \qquad s_k = \log \sigma_k^2.$$


    Form chosen: the MTAN authors' code, $\frac{1}{2} e^{-s_k} L_k + s_k / 2$ for every task ($c_k = 1/2$),
    with $s_k$ initialised to $-0.5$. Kendall's paper uses $c = 1$ for classification-like losses; set
    `task_factors={"segmentation": 1.0}` for that. The weights $c_k e^{-s_k}$ are reported.

    Options: `init` (initial $s_k$, $-0.5$), `factor` ($c_k$ for every task, 0.5), `task_factors` (per-task
    $c_k$ overriding `factor`).

    Guarantees: for fixed $L_k$ the optimal $s_k$ is $\log(2 c_k L_k)$, i.e. each task's weighted loss
    tends to $1/2$; weights are always positive. A task dropped from a step (``Weighting.only``: no label
    in the batch) or whose loss is exactly 0 in a batch contributes nothing, its $s_k$ included.
    """

    display_name = "Uncert."

    properties = frozenset({"positive_weights", "permutation_equivariant", "loss_scale_invariant_at_equilibrium"})

    factors: Tensor

    def __init__(
        self,
        task_names: list[str],
        init: float = -0.5,
        factor: float = 0.5,
        task_factors: dict[str, float] | None = None,
    ) -> None:
        super().__init__(task_names)
        try:
            init = float(init)
        except (TypeError, ValueError):
            raise ConfigError(f"weighting.options.init must be a number, got {init!r}") from None
        factors = [positive_float("factor", factor)] * self.num_tasks
        for name, value in (task_factors or {}).items():
            if name not in self.task_names:
                raise ConfigError(
                    f"weighting.options.task_factors: unknown task {name!r}; tasks are {', '.join(self.task_names)}"
                )
            factors[self.task_names.index(name)] = positive_float(f"task_factors.{name}", value)
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), init))
        self.register_buffer("factors", torch.tensor(factors), persistent=False)

    def combine(self, losses: Tensor) -> Tensor:
        """The uncertainty-weighted sum of the task losses plus the s_k regulariser."""
        mask = present_mask(losses).to(losses.dtype)
        s = self.select(self.log_vars).to(losses.dtype)
        c = self.select(self.factors).to(losses.dtype)
        self.last_weights = (c * torch.exp(-s)).detach()
        return uncertainty_loss(losses * mask, s * mask, c)
