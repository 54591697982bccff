"""Old public names kept for one release: each use warns once per call site (DeprecationWarning)."""

from __future__ import annotations

import warnings
from typing import Any


class MtlkitDeprecationWarning(DeprecationWarning):
    """An old mtlkit name or config key that still works for one release; ``mtlkit`` prints these."""


#: the release that removes the names deprecated now
REMOVED_IN = "0.2"


def renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now ``new`` (``stacklevel``: 3 points at the caller of the function that warns)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in mtlkit {REMOVED_IN}; use {new}",
        MtlkitDeprecationWarning,
        stacklevel=stacklevel,
    )


def pop_renamed(kwargs: dict[str, Any], old: str, new: str, where: str, stacklevel: int = 4) -> Any:
    """``kwargs.pop(old)`` with a warning naming ``where(new=...)``; a KeyError when ``old`` is absent."""
    value = kwargs.pop(old)
    renamed(f"{where}({old}=...)", f"{where}({new}=...)", stacklevel)
    return value
