"""Task-weighting and gradient-balancing methods, registered by name in WEIGHTINGS."""

from mtlkit.weighting.base import Weighting
from mtlkit.weighting.equal import Equal

__all__ = ["Weighting", "Equal"]
