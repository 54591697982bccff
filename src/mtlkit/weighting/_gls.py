"""Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh, CVPR Workshops 2019).

Paper: [MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
Learning](https://arxiv.org/abs/1904.08492), CVPR-W 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import present_mask
from mtlkit.weighting.base import Weighting


def gls_loss(losses: Tensor) -> Tensor:
    """(prod_k L_k)^(1/K) over the tasks with a non-zero loss, as exp(mean_k log L_k) for stability."""
    mask = present_mask(losses)
    if not bool(mask.any()):
        return losses.sum() * 0.0
    return torch.exp(torch.log(losses[mask]).mean())


def gls_weights(losses: Tensor) -> Tensor:
    """d GLS / d L_k = GLS / (K' L_k) (K' present tasks; 0 for absent ones): the effective task weights."""
    ls = losses.detach()
    mask = present_mask(ls)
    out = torch.zeros_like(ls)
    if bool(mask.any()):
        total = torch.exp(torch.log(ls[mask]).mean())
        out[mask] = total / (int(mask.sum()) * ls[mask])
    return out


@WEIGHTINGS.register("gls")
class GLS(Weighting):
    r"""L = (prod_k L_k)^(1/K): the geometric mean of the task losses (no hyper-parameters).

    $$L = \Big(\prod_k L_k\Big)^{1/K}$$


    Its gradient is $\sum_k \frac{L}{K L_k} \nabla L_k$, i.e. the gradient of $\frac{L}{K} \sum_k \log L_k$:
    every task's log-loss counts equally, whatever the loss's scale. A task whose loss is exactly 0
    in a batch (absent from it) is left out of the product.

    Options: none.

    Guarantees: weights $L / (K L_k)$ are positive; multiplying one task's loss by $c > 0$ multiplies
    the whole update by $c^{1/K}$ without changing its direction.
    """

    properties = frozenset({"positive_weights", "loss_scale_invariant", "permutation_equivariant"})

    def combine(self, losses: Tensor) -> Tensor:
        """The geometric mean of the (present) task losses."""
        self.last_weights = gls_weights(losses)
        return gls_loss(losses)
