"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, TMLR 2022).

Paper: [Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
Learning](https://arxiv.org/abs/2111.10603), TMLR 2022 (first titled "A Closer Look at Loss Weighting in Multi-Task
Learning").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import generator_state, new_generator, set_generator_state
from mtlkit.weighting.base import Weighting


def rlw_weights(num_tasks: int, generator: torch.Generator | None = None) -> Tensor:
    """softmax(lambda~), lambda~ ~ N(0, I_K): the paper's default (normal) weight distribution."""
    return torch.softmax(torch.randn(num_tasks, generator=generator), dim=0)


@WEIGHTINGS.register("rlw")
class RLW(Weighting):
    r"""L = sum_k lambda_k L_k with fresh random weights lambda = softmax(N(0, I)) every step.

    $$L = \sum_k \lambda_k L_k, \qquad \lambda = \operatorname{softmax}(\epsilon),
    \quad \epsilon \sim \mathcal{N}(0, I).$$


    Options: `seed` (0) of the method's own generator, whose state is checkpointed (extra state), so
    a resumed run draws the same weights as an uninterrupted one.

    Guarantees: weights are positive and sum to 1 (the paper's normalisation; `equal` sums to
    $K$), and are independent of the losses.
    """

    properties = frozenset({"positive_weights"})

    def __init__(self, task_names: list[str], seed: int = 0) -> None:
        super().__init__(task_names)
        self.generator = new_generator(seed)

    def combine(self, losses: Tensor) -> Tensor:
        """The randomly weighted sum of the task losses."""
        w = rlw_weights(self.num_tasks, self.generator).to(device=losses.device, dtype=losses.dtype)
        self.last_weights = w
        return (w * losses).sum()

    def get_extra_state(self) -> dict[str, Any]:
        """The generator state (a uint8 tensor)."""
        return {"generator": generator_state(self.generator)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the generator state."""
        set_generator_state(self.generator, state["generator"])
