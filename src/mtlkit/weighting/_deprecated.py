"""The weighting namespace's old import paths, kept for one release with a DeprecationWarning.

Before, each method lived in a public module of its own name (``mtlkit.weighting.pcgrad``) and
``mtlkit.weighting`` re-exported every pure function, so 16 of those modules were shadowed by a
function of the same name. Now the modules are private (``_pcgrad``) and the functions live in
:mod:`mtlkit.weighting.functional`. Still accepted, each with a DeprecationWarning:

* ``mtlkit.weighting.<function>`` (``from mtlkit.weighting import pcgrad``): the function, as
  before; new home ``mtlkit.weighting.functional.<function>``;
* ``mtlkit.weighting.<old module>.<name>`` (``from mtlkit.weighting.pcgrad import PCGrad``,
  ``import mtlkit.weighting.dwa``): the name from the private module; classes are in
  ``mtlkit.weighting``, functions in ``mtlkit.weighting.functional``;
* ``mtlkit.weighting.<old module>`` as an attribute, for the 13 modules no function shadowed
  (``mtlkit.weighting.dwa``): that module.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import Any

#: the old public method modules, each now ``mtlkit.weighting._<name>``
OLD_MODULES = (
    "aligned_mtl",
    "auto_lambda",
    "cagrad",
    "config",
    "db_mtl",
    "dualproj",
    "dwa",
    "equal",
    "excess_mtl",
    "fairgrad",
    "famo",
    "gls",
    "go4align",
    "graddrop",
    "gradnorm",
    "gradvac",
    "imtl",
    "krum",
    "mgda",
    "moco",
    "modo",
    "nash_mtl",
    "pcgrad",
    "rlw",
    "sdmgrad",
    "stch",
    "trimmed_mean",
    "uncertainty",
    "upgrad",
)
PACKAGE = "mtlkit.weighting"


def _home(name: str) -> str:
    """Where ``name`` is imported from now (public), or '' when it is private."""
    package = sys.modules[PACKAGE]
    if name in getattr(package, "__all__", ()):
        return PACKAGE
    functional = importlib.import_module(f"{PACKAGE}.functional")
    return f"{PACKAGE}.functional" if name in functional.__all__ else ""


def _warn(old: str, name: str, stacklevel: int) -> None:
    home = _home(name)
    new = f"import it from {home}" if home else "it is private now"
    warnings.warn(
        f"{old} is deprecated and goes in the next release: {new}", DeprecationWarning, stacklevel=stacklevel + 1
    )


class OldModule(ModuleType):
    """``mtlkit.weighting.<old>``: forwards every name to ``mtlkit.weighting._<old>``, warning."""

    def __init__(self, old: str) -> None:
        super().__init__(f"{PACKAGE}.{old}", f"Deprecated alias of {PACKAGE}._{old} (see {PACKAGE}._deprecated).")
        self._private = f"{PACKAGE}._{old}"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module(self._private), name)
        _warn(f"{self.__name__}.{name}", name, stacklevel=2)
        return value

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self._private))


def install() -> None:
    """Put the old module paths in ``sys.modules`` (the package attributes stay unset)."""
    for old in OLD_MODULES:
        sys.modules.setdefault(f"{PACKAGE}.{old}", OldModule(old))


def package_getattr(name: str) -> Any:
    """``mtlkit.weighting.<name>`` for an old name that is no longer there."""
    functional = importlib.import_module(f"{PACKAGE}.functional")
    if name in functional.__all__:
        _warn(f"{PACKAGE}.{name}", name, stacklevel=3)
        return getattr(functional, name)
    if name in OLD_MODULES:
        warnings.warn(
            f"{PACKAGE}.{name} (a module) is deprecated and goes in the next release: its classes are "
            f"in {PACKAGE}, its functions in {PACKAGE}.functional",
            DeprecationWarning,
            stacklevel=3,
        )
        return sys.modules[f"{PACKAGE}.{name}"]
    raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
