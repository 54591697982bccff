"""Backbones, registered by name in BACKBONES: ``segnet`` and ``resnet{18,34,50}_dilated``.

:func:`build_backbone` makes one at a width, optionally loading pretrained weights
(``none`` | ``imagenet`` | a state-dict file); see :mod:`.base` for the staged contract.
"""

from __future__ import annotations

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.base import Backbone
from mtlkit.models.backbones.resnet import DilatedResNet, resnet_factory
from mtlkit.models.backbones.segnet import SegNetBackbone
from mtlkit.registry import Registry

__all__ = ["BACKBONES", "Backbone", "DilatedResNet", "SegNetBackbone", "build_backbone", "check_pretrained"]

BACKBONES: Registry = Registry("backbone")
BACKBONES.register("segnet")(SegNetBackbone)
for _depth in (18, 34, 50):
    BACKBONES.register(f"resnet{_depth}_dilated")(resnet_factory(_depth))


def check_pretrained(backbone: str, pretrained: str) -> None:
    """Raise a ConfigError when ``pretrained`` is not a string or asks weights of a backbone without any."""
    if not isinstance(pretrained, str) or not pretrained:
        raise ConfigError(f"model.pretrained must be 'none', 'imagenet' or a file path (got {pretrained!r})")
    if pretrained != "none" and backbone == "segnet":
        raise ConfigError("model.pretrained: the segnet backbone has no pretrained weights (use 'none')")


def build_backbone(name: str, width: float = 1.0, in_channels: int = 3, pretrained: str = "none") -> Backbone:
    """The registered backbone ``name`` at ``width``, with ``pretrained`` weights loaded when asked."""
    check_pretrained(name, pretrained)
    backbone = BACKBONES.get(name)(width, in_channels)
    if pretrained != "none":
        backbone.load_pretrained(pretrained)
    return backbone
