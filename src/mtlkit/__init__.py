"""mtlkit: multi-task learning for dense prediction (MTAN, cross-stitch, task weighting)."""

__version__ = "0.1.0"
