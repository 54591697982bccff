"""Deprecated (0.2 name): cross-stitch over any backbone is :class:`mtlkit.models.cross_stitch.CrossStitch`.

``StagedCrossStitch`` is that class; importing it from here warns. This module goes away in the
next release.
"""

from __future__ import annotations

import warnings


def __getattr__(name: str) -> object:
    if name != "StagedCrossStitch":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mtlkit.models.cross_stitch import CrossStitch

    warnings.warn(
        "mtlkit.models.stitch.StagedCrossStitch is deprecated; use mtlkit.models.cross_stitch.CrossStitch",
        DeprecationWarning,
        stacklevel=2,
    )
    return CrossStitch
