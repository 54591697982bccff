"""Deprecated (0.2 names): MTAN over any backbone is :class:`mtlkit.models.mtan.MTAN`.

``MTANOverBackbone`` and ``ResNetMTAN`` are that class, ``AttentionGate`` is
:class:`mtlkit.models.blocks.AttentionGate` (flat layout: ``grouped=False``); importing them from
here warns. ``WRN_LEVELS``, ``shared_block``, ``conv_block``, ``resnet_parts`` and ``wrn_parts`` live
in :mod:`mtlkit.models.mtan`. This module goes away in the next release.
"""

from __future__ import annotations

import warnings

_MOVED = {
    "MTANOverBackbone": ("mtlkit.models.mtan", "MTAN"),
    "ResNetMTAN": ("mtlkit.models.mtan", "MTAN"),
    "AttentionGate": ("mtlkit.models.blocks", "AttentionGate"),
    "WRN_LEVELS": ("mtlkit.models.mtan", "WRN_LEVELS"),
    "shared_block": ("mtlkit.models.mtan", "shared_block"),
    "conv_block": ("mtlkit.models.mtan", "conv_block"),
    "resnet_parts": ("mtlkit.models.mtan", "resnet_parts"),
    "wrn_parts": ("mtlkit.models.mtan", "wrn_parts"),
}


def __getattr__(name: str) -> object:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, new = _MOVED[name]
    warnings.warn(
        f"mtlkit.models.resnet_mtan.{name} is deprecated; use {module}.{new}", DeprecationWarning, stacklevel=2
    )
    import importlib

    return getattr(importlib.import_module(module), new)
