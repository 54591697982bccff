"""mtlkit: multi-task learning for dense prediction (MTAN, cross-stitch, task weighting).

Python API: ``mtlkit.fit(model, tasks, train_data, val_data, ...)`` trains objects with mtlkit's
loop; ``mtlkit.backward(losses, shared_params=..., weighting="pcgrad")`` / ``mtlkit.Balancer`` drop a
weighting method into your own loop. Both import torch on first use.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "fit": "mtlkit.train.fit",
    "backward": "mtlkit.balance",
    "Balancer": "mtlkit.balance",
    "FeatureCut": "mtlkit.balance",
}
__all__ = ["Balancer", "FeatureCut", "__version__", "backward", "fit"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtlkit' has no attribute {name!r}")
