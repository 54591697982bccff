"""Equal weighting: the plain sum of the task losses (every weight 1)."""

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting.base import Weighting


@WEIGHTINGS.register("equal")
class Equal(Weighting):
    """L = sum_k L_k. The MTAN paper's "Equal Weighting" baseline."""

    properties = frozenset({"positive_weights", "permutation_equivariant"})
