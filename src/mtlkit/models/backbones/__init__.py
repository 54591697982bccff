"""Backbones, registered by name in BACKBONES: ``segnet``, ``resnet{18,34,50}_dilated`` and ``wrn28``.

:func:`build_backbone` makes one at a width, optionally loading pretrained weights
(``none`` | ``imagenet`` | a state-dict file); see :mod:`.base` for the staged contract.
``wrn28`` (the Visual Decathlon's WRN-28-4) has classifier heads: its tasks are classification tasks.
"""

from __future__ import annotations

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.base import Backbone
from mtlkit.models.backbones.resnet import DilatedResNet, resnet_factory
from mtlkit.models.backbones.segnet import SegNetBackbone
from mtlkit.models.backbones.wrn import WideResNet
from mtlkit.registry import Registry

__all__ = ["BACKBONES", "Backbone", "DilatedResNet", "SegNetBackbone", "WideResNet", "build_backbone",
           "check_pretrained", "head_kind"]

BACKBONES: Registry = Registry("backbone")
BACKBONES.register("segnet")(SegNetBackbone)
for _depth in (18, 34, 50):
    BACKBONES.register(f"resnet{_depth}_dilated")(resnet_factory(_depth))
BACKBONES.register("wrn28")(WideResNet)

#: backbones whose heads classify whole images (the others predict dense maps)
CLASSIFIER_BACKBONES = ("wrn28",)
#: backbones without pretrained weights
NO_PRETRAINED = ("segnet", "wrn28")


def head_kind(backbone: str) -> str:
    """``classification`` when ``backbone``'s heads classify whole images, else ``dense``."""
    return "classification" if backbone in CLASSIFIER_BACKBONES else "dense"


def check_pretrained(backbone: str, pretrained: str) -> None:
    """Raise a ConfigError when ``pretrained`` is not a string or asks weights of a backbone without any."""
    if not isinstance(pretrained, str) or not pretrained:
        raise ConfigError(f"model.pretrained must be 'none', 'imagenet' or a file path (got {pretrained!r})")
    if pretrained != "none" and backbone in NO_PRETRAINED:
        raise ConfigError(f"model.pretrained: the {backbone} backbone has no pretrained weights (use 'none')")


def build_backbone(name: str, width: float = 1.0, in_channels: int = 3, pretrained: str = "none") -> Backbone:
    """The registered backbone ``name`` at ``width``, with ``pretrained`` weights loaded when asked."""
    check_pretrained(name, pretrained)
    backbone = BACKBONES.get(name)(width, in_channels)
    if pretrained != "none":
        backbone.load_pretrained(pretrained)
    return backbone
