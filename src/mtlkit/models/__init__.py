"""Architectures, registered by name in ARCHITECTURES, and :func:`build_model` that makes one.

Importing this package registers the MTAN paper's seven SegNet-based networks: ``single``,
``stan``, ``split_wide``, ``split_deep``, ``dense``, ``cross_stitch`` and ``mtan``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.models import cross_stitch, dense, mtan, single, split, stan  # noqa: F401  (registration)
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.models.blocks import check_width
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task

__all__ = ["MultiTaskModel", "build_model", "count_parameters", "model_options"]

#: constructor arguments that are not ``model.options``
_FIXED = ("self", "tasks", "width")


def model_options(cls: type) -> dict[str, Any] | None:
    """The options (keyword arguments with defaults) ``cls`` accepts; None when it takes any."""
    options = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if name in _FIXED or param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        options[name] = param.default
    return options


def build_model(arch: str, tasks: Sequence[Task], width: float = 1.0, **options: Any) -> MultiTaskModel:
    """The registered architecture ``arch`` for ``tasks``; unknown names/options are ConfigErrors."""
    cls = ARCHITECTURES.get(arch)
    accepted = model_options(cls)
    if accepted is not None:
        unknown = [k for k in options if k not in accepted]
        if unknown:
            takes = ", ".join(accepted) or "no options"
            raise ConfigError(f"model.options.{unknown[0]}: unknown option for model.arch {arch!r} (it takes {takes})")
    in_channels = options.get("in_channels", 3)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"model.options.in_channels must be a positive integer (got {in_channels!r})")
    return cls(list(tasks), check_width(width), **options)
