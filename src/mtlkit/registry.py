"""Name -> class registries, so configs name architectures, weighting methods, datasets and task kinds.

Adding one is one file that decorates its class with ``@REGISTRY.register("name")`` plus one
import line in the package ``__init__`` that holds it; a family of pieces that belong together outside
the core (a benchmark's datasets, networks and commands) is a plugin package named in
:data:`PLUGINS`, loaded with the built-ins on the first lookup. Every lookup by name goes through
:meth:`Registry.get`, so an unknown name anywhere (architecture, weighting method, dataset, task
kind, backbone) is the same one-line ConfigError, naming the nearest registered name when one is
close ("did you mean 'nash_mtl'?") and listing the choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from mtlkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from config names to classes or factories of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is a programming error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is a ConfigError naming the nearest and the choices."""
        _load_builtins()
        if name not in self._items:
            hint = self.suggest(name)
            did = f"; did you mean {hint!r}?" if hint is not None else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{did} (choose one of: {', '.join(self.names())})")
        return self._items[name]

    def suggest(self, name: object) -> str | None:
        """The registered name closest to ``name`` (case-insensitive, ``difflib`` ratio >= 0.6), or None."""
        by_lower = {n.lower(): n for n in self.names()}
        close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
        return by_lower[close[0]] if close else None

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        _load_builtins()
        return sorted(self._items.items())

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._items


ARCHITECTURES: Registry = Registry("architecture")
WEIGHTINGS: Registry = Registry("weighting method")
DATASETS: Registry = Registry("dataset")
TASK_KINDS: Registry = Registry("task kind")

#: packages outside the core that bring their own pieces, as detectron2's ``projects/``: importing one
#: registers its entries (datasets, architectures, ...) in the registries above, and its ``cli``
#: module, if it has one, adds command groups to ``mtlkit`` (``register(subparsers)``, as the modules
#: of ``mtlkit.cli`` do). The core never imports them otherwise; one that is not installed is skipped.
PLUGINS = ("mtlkit.decathlon",)

_loaded = False


def installed_plugins() -> list[str]:
    """The names in :data:`PLUGINS` that can be imported here (a trimmed install may lack some)."""
    import importlib.util

    return [name for name in PLUGINS if importlib.util.find_spec(name) is not None]


def _load_builtins() -> None:
    """Import the packages whose modules register the built-in entries, then the plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    import mtlkit.data  # noqa: F401
    import mtlkit.models  # noqa: F401
    import mtlkit.tasks  # noqa: F401
    import mtlkit.weighting  # noqa: F401

    for name in installed_plugins():
        importlib.import_module(name)
