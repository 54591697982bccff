"""Architectures, registered by name in ARCHITECTURES (one class per name), and :func:`build_model`.

Importing this package registers the MTAN paper's seven SegNet-based networks (``single``,
``stan``, ``split_wide``, ``split_deep``, ``dense``, ``cross_stitch``, ``mtan``) and the other
architectures written over any backbone (``hps``, ``mmoe``, ``cgc``, ``ple``, ``dselect_k``,
``ltb``). ``single``, ``mtan`` and ``cross_stitch`` are written once over the backbone contract
(:class:`~mtlkit.models.over_backbone.BackboneModel`) and build the paper's exact layout on the
``segnet`` backbone (``Backbone.paper_segnet``); ``stan``, ``split_*`` and ``dense`` are SegNet
networks of their own (``own_backbone = "segnet"``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.models import cgc, cross_stitch, dense, dselect_k, hps, ltb, mmoe, mtan, ple, single, split, stan  # noqa: F401  (registration)
from mtlkit.models.backbones import BACKBONES, check_pretrained
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.models.blocks import check_width
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task

__all__ = ["MultiTaskModel", "build_model", "count_parameters", "model_class", "model_options"]

#: constructor arguments that are not ``model.options`` (they have their own ``model.*`` keys)
_FIXED = ("self", "tasks", "width", "backbone", "pretrained", "align_corners")


def model_class(arch: str, backbone: str | None = None) -> type[MultiTaskModel]:
    """The class registered as ``arch``, checked to build on ``backbone`` (None: the architecture's own).

    A :class:`BackboneModel` builds on any backbone; another architecture only on its
    ``own_backbone`` (the SegNet baselines on ``segnet``).
    """
    cls: type[MultiTaskModel] = ARCHITECTURES.get(arch)
    if backbone is None:
        return cls
    BACKBONES.get(backbone)
    if issubclass(cls, BackboneModel) or backbone == cls.own_backbone:
        return cls
    own = "SegNet" if cls.own_backbone == "segnet" else (cls.own_backbone or "its own network")
    raise ConfigError(
        f"model.backbone {backbone!r}: model.arch {arch!r} is built on {own} only "
        f"(leave model.backbone unset, or use an architecture written over any backbone: "
        f"{', '.join(n for n, c in ARCHITECTURES.items() if issubclass(c, BackboneModel))})"
    )


def __getattr__(name: str) -> object:
    """``OVER_BACKBONE`` (0.2), deprecated: every architecture name is one class on every backbone it supports."""
    if name == "OVER_BACKBONE":
        warnings.warn(
            "mtlkit.models.OVER_BACKBONE is deprecated: ARCHITECTURES.get(arch) is the class on every backbone",
            DeprecationWarning,
            stacklevel=2,
        )
        return {n: ARCHITECTURES.get(n) for n in ("single", "mtan", "cross_stitch")}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_options(cls: type) -> dict[str, Any] | None:
    """The options (keyword arguments with defaults) ``cls`` accepts; None when it takes any."""
    options = {}
    for name, param in inspect.signature(cls).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if name in _FIXED or param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        options[name] = param.default
    return options


def build_model(
    arch: str,
    tasks: Sequence[Task],
    width: float = 1.0,
    *,
    backbone: str | None = None,
    pretrained: str = "none",
    align_corners: bool = False,
    **options: Any,
) -> MultiTaskModel:
    """``arch`` on ``backbone`` (None: its own) for ``tasks``; unknown names/options are ConfigErrors.

    ``align_corners`` (``model.align_corners``): the ResNet backbones' DeepLabV3 heads upsample with
    ``align_corners=True`` (the MTAN authors', Auto-Lambda's and LibMTL's setting) instead of
    torchvision's False; an architecture without such heads refuses True.
    """
    if not isinstance(arch, str):
        raise ConfigError(f"build_model: arch must be an architecture name, got {type(arch).__name__}")
    if isinstance(tasks, (str, bytes)) or not all(isinstance(t, Task) for t in tasks):
        raise ConfigError("build_model: tasks must be a list of Task objects (mtlkit.tasks.segmentation_task, ...)")
    check_width(width)
    cls = model_class(arch, backbone)
    accepted = model_options(cls)
    if accepted is not None:
        unknown = [k for k in options if k not in accepted]
        if unknown:
            takes = ", ".join(accepted) or "no options"
            raise ConfigError(f"model.options.{unknown[0]}: unknown option for model.arch {arch!r} (it takes {takes})")
    in_channels = options.get("in_channels", 3)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"model.options.in_channels must be a positive integer (got {in_channels!r})")
    if not isinstance(align_corners, bool):
        raise ConfigError(f"model.align_corners must be true or false (got {align_corners!r})")
    make: Callable[..., MultiTaskModel] = cls  # the contract: cls(tasks, width, **options)
    if issubclass(cls, BackboneModel):
        backbone = backbone or cls.default_backbone
        check_pretrained(backbone, pretrained)
        head = {}
        if align_corners:  # passed only when set, so subclasses written without the argument still build
            if "align_corners" not in inspect.signature(cls).parameters:
                raise ConfigError(f"model.align_corners: model.arch {arch!r} does not take it")
            head["align_corners"] = True
        model = make(list(tasks), check_width(width), backbone=backbone, pretrained=pretrained, **options, **head)
    elif align_corners:
        on = f"the {backbone} backbone" if backbone else "its own backbone"
        raise ConfigError(
            f"model.align_corners: model.arch {arch!r} on {on} has no upsampling head "
            "(the option sets the ResNet backbones' DeepLabV3 heads)"
        )
    elif pretrained != "none":
        raise ConfigError(f"model.pretrained: model.arch {arch!r} on its own backbone has no pretrained weights")
    else:
        model = make(list(tasks), check_width(width), **options)
    # what it was built from: mtlkit.fit writes it to config.yaml and computes #P from it
    model.build_spec = {
        "arch": arch,
        "backbone": backbone,
        "pretrained": pretrained,
        "width": float(width),
        "align_corners": align_corners,
        "options": dict(options),
    }
    return model
