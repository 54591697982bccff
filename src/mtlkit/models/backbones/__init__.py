"""Backbones, registered by name in BACKBONES: ``segnet``, ``resnet{18,34,50}_dilated``, ``wrn28`` and ``alexnet``.

:func:`build_backbone` makes one at a width, optionally loading pretrained weights
(``none`` | ``imagenet`` | a state-dict file); see :mod:`.base` for the staged contract.
What a backbone can do is declared on its class (:class:`~.base.Backbone`): ``dense_heads``
(``wrn28``, the Visual Decathlon's WRN-28-4, classifies whole images), ``has_pretrained``
(the ResNets, ``alexnet``), ``paper_segnet`` (``segnet``) and ``stitch_stages`` (``alexnet``: the
cross-stitch paper's five stitch points).
"""

from __future__ import annotations

import warnings

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.alexnet import AlexNet
from mtlkit.models.backbones.base import Backbone
from mtlkit.models.backbones.resnet import DilatedResNet, resnet_factory
from mtlkit.models.backbones.segnet import SegNetBackbone
from mtlkit.models.backbones.wrn import WideResNet
from mtlkit.registry import Registry

__all__ = [
    "BACKBONES",
    "AlexNet",
    "Backbone",
    "DilatedResNet",
    "SegNetBackbone",
    "WideResNet",
    "build_backbone",
    "check_pretrained",
    "head_kind",
]

BACKBONES: Registry[type[Backbone]] = Registry("backbone")
BACKBONES.register("segnet")(SegNetBackbone)
for _depth in (18, 34, 50):
    BACKBONES.register(f"resnet{_depth}_dilated")(resnet_factory(_depth))
BACKBONES.register("wrn28")(WideResNet)
BACKBONES.register("alexnet")(AlexNet)


def head_kind(backbone: str) -> str:
    """``dense`` when ``backbone``'s heads predict per-pixel maps, ``image`` when they classify whole images."""
    return "dense" if BACKBONES.get(backbone).dense_heads else "image"


def __getattr__(name: str) -> tuple[str, ...]:
    """The name lists of 0.2 (``CLASSIFIER_BACKBONES``, ``NO_PRETRAINED``), deprecated: ask the class."""
    if name == "CLASSIFIER_BACKBONES":
        picked = tuple(n for n, cls in BACKBONES.items() if not cls.dense_heads)
    elif name == "NO_PRETRAINED":
        picked = tuple(n for n, cls in BACKBONES.items() if not cls.has_pretrained)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"mtlkit.models.backbones.{name} is deprecated; read the backbone class's "
        f"{'dense_heads' if name == 'CLASSIFIER_BACKBONES' else 'has_pretrained'}",
        DeprecationWarning,
        stacklevel=2,
    )
    return picked


def check_pretrained(backbone: str, pretrained: str) -> None:
    """Raise a ConfigError when ``pretrained`` is not a string or asks weights of a backbone without any."""
    if not isinstance(pretrained, str) or not pretrained:
        raise ConfigError(f"model.pretrained must be 'none', 'imagenet' or a file path (got {pretrained!r})")
    if pretrained != "none" and not BACKBONES.get(backbone).has_pretrained:
        raise ConfigError(f"model.pretrained: the {backbone} backbone has no pretrained weights (use 'none')")


def build_backbone(name: str, width: float = 1.0, in_channels: int = 3, pretrained: str = "none") -> Backbone:
    """The registered backbone ``name`` at ``width``, with ``pretrained`` weights loaded when asked."""
    check_pretrained(name, pretrained)
    backbone = BACKBONES.get(name)(width, in_channels)
    if pretrained != "none":
        backbone.load_pretrained(pretrained)
    return backbone
