"""Equal weighting: the plain sum of the task losses (every weight 1).

Paper: the baseline of the MTAN paper, [End-to-End Multi-Task Learning with
Attention](https://arxiv.org/abs/1803.10704), CVPR 2019.
"""

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting.base import Weighting


@WEIGHTINGS.register("equal")
class Equal(Weighting):
    r"""L = sum_k L_k: the MTAN paper's "Equal Weighting" baseline.

    $$L = \sum_k L_k$$

    Options: none.

    Guarantees: every weight is 1; the update is the gradient of the summed losses.
    """

    properties = frozenset({"positive_weights", "permutation_equivariant"})
