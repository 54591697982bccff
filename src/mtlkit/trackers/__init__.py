"""The loggers a run names in ``train.loggers: [tensorboard, mlflow, wandb]`` (default ``[tensorboard]``).

Each is one module with a :class:`mtlkit.train.logging.Logger` subclass, registered by name in
:data:`LOGGERS` (the one lookup: the config, the sweep's up-front check and ``fit(loggers=...)``
go through it). :func:`open_loggers` opens them for a run folder, each as a
:class:`~mtlkit.train.logging.Background` logger on its own thread, so it never slows training,
and one that fails warns once and is dropped. MLflow and W&B need the extra
``pip install 'mtlkit[trackers]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from mtlkit.errors import ConfigError, shorten
from mtlkit.trackers.base import epoch_scalars, flatten
from mtlkit.train.logging import CLOSE_TIMEOUT, FINAL_STATUSES, Background, Logger


class LoggerEntry(NamedTuple):
    """Where a registered logger lives (imported only when a run names it) and what it needs installed."""

    module: str
    cls: str
    #: the package it imports, None when mtlkit's own dependencies suffice
    package: str | None = None
    #: the mtlkit extra that installs ``package``
    extra: str | None = None


#: logger name (in ``train.loggers``) -> where its class is
LOGGERS: dict[str, LoggerEntry] = {
    "tensorboard": LoggerEntry("mtlkit.trackers.tensorboard", "TensorBoardTracker"),
    "mlflow": LoggerEntry("mtlkit.trackers.mlflow", "MlflowTracker", "mlflow", "trackers"),
    "wandb": LoggerEntry("mtlkit.trackers.wandb", "WandbTracker", "wandb", "trackers"),
}


def check_loggers(names: Iterable[str], options: dict[str, Any]) -> None:
    """Refuse unknown logger names and loggers whose package is missing, in one line naming the extra."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: unknown tracker {name!r} (choose from {', '.join(LOGGERS)})")
        package, extra = LOGGERS[name].package, LOGGERS[name].extra
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.loggers: {name} needs {package}: pip install 'mtlkit[{extra}]'")
    for name in options:
        if name not in LOGGERS:
            raise ConfigError(f"train.tracker_options: unknown tracker {name!r} (choose from {', '.join(LOGGERS)})")


def logger_class(name: str) -> type[Logger]:
    """The class registered as ``name`` (imports its module)."""
    entry = LOGGERS[name]
    cls: type[Logger] = getattr(importlib.import_module(entry.module), entry.cls)
    return cls


def opener(name: str, run_path: Path, options: dict[str, Any]) -> Callable[[], Logger]:
    """A function that opens logger ``name`` for the run folder (called on the logger's thread)."""

    def make() -> Logger:
        entry = LOGGERS[name]
        # a registered logger is made from the run folder and its options
        cls: Callable[[Path, dict[str, Any]], Logger] = getattr(importlib.import_module(entry.module), entry.cls)
        return cls(run_path, dict(options))

    return make


def open_loggers(names: Iterable[str], run_path: Path, options: dict[str, Any] | None = None) -> list[Logger]:
    """The loggers ``names`` (in order, once each) for ``run_path``, each opened and called on its own thread;
    ``options``: per logger name, its options (``train.tracker_options``)."""
    names, options = list(dict.fromkeys(names)), dict(options or {})
    check_loggers(names, options)
    return [Background(n, opener(n, Path(run_path), options.get(n, {}))) for n in names]


def logger_names(cfg: Any) -> list[str]:
    """The loggers a config turns on: ``train.loggers``, without tensorboard where the deprecated
    ``train.tensorboard`` is false."""
    return [n for n in dict.fromkeys(cfg.train.loggers) if n != "tensorboard" or cfg.train.tensorboard is not False]


def config_loggers(cfg: Any, run_path: Path) -> list[Logger]:
    """The loggers ``cfg`` names (:func:`logger_names`), with their ``train.tracker_options``, for ``run_path``."""
    return open_loggers(logger_names(cfg), run_path, cfg.train.tracker_options)


def split_loggers(
    loggers: str | Logger | Iterable[str | Logger], tensorboard: bool | None = None
) -> tuple[list[str], list[Logger]]:
    """``fit(loggers=...)`` as (the registered names, in order, once each; the :class:`Logger` objects).

    ``tensorboard``: fit's deprecated keyword: True adds ``"tensorboard"``, False leaves it out.
    """
    items = [loggers] if isinstance(loggers, (str, Logger)) else list(loggers)
    names: list[str] = []
    objects: list[Logger] = []
    for item in items:
        if isinstance(item, Logger):
            objects.append(item)
        elif isinstance(item, str) and item in LOGGERS:
            names.append(item)
        else:
            raise ConfigError(
                f"fit(loggers=...): {shorten(item)} is neither a logger name ({', '.join(LOGGERS)}) "
                "nor a mtlkit.train.logging.Logger"
            )
    if tensorboard is not None:
        warnings.warn(
            "fit(tensorboard=...) is deprecated and goes in the next release: use fit(loggers=...) "
            'with or without "tensorboard"',
            DeprecationWarning,
            stacklevel=3,
        )
        names = names + ["tensorboard"] if tensorboard else [n for n in names if n != "tensorboard"]
    names = list(dict.fromkeys(names))
    check_loggers(names, {})
    return names, objects


def __getattr__(name: str) -> Any:
    """The old names (:mod:`mtlkit.trackers._deprecated`), each with a DeprecationWarning."""
    deprecated = importlib.import_module("mtlkit.trackers._deprecated") if not name.startswith("_") else None
    if deprecated is not None and name in deprecated.NAMES:
        obj, instead = deprecated.NAMES[name]
        warnings.warn(
            f"mtlkit.trackers.{name} is deprecated and goes in the next release: use {instead}",
            DeprecationWarning,
            stacklevel=2,
        )
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLOSE_TIMEOUT",
    "FINAL_STATUSES",
    "LOGGERS",
    "LoggerEntry",
    "check_loggers",
    "config_loggers",
    "epoch_scalars",
    "flatten",
    "logger_class",
    "logger_names",
    "open_loggers",
    "opener",
    "split_loggers",
]
