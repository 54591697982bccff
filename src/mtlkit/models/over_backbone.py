"""What every architecture written over a backbone shares: backbone copies, heads, input checks.

``BackboneModel(tasks, width, backbone=..., in_channels=..., pretrained=..., align_corners=...)``
checks the tasks suit the backbone's heads (``Backbone.dense_heads``: per-pixel maps need dense
tasks, image classifiers such as ``wrn28``'s image-level ones, ``Task.dense``), remembers how
to build the backbone (:func:`~mtlkit.models.backbones.build_backbone`), and gives one head per
task from the backbone's ``make_head`` (``align_corners``: the upsampling convention of the ResNet
backbones' DeepLabV3 heads, ``model.align_corners``). Subclasses say how copies connect.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import BACKBONES, Backbone, build_backbone
from mtlkit.models.backbones.base import refuse_align_corners
from mtlkit.models.base import MultiTaskModel
from mtlkit.models.blocks import check_dense_tasks, check_width
from mtlkit.tasks import Task


def positive_int(value: object, key: str) -> int:
    """``value`` when it is a positive int, else a ConfigError naming ``model.options.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.options.{key} must be a positive integer (got {value!r})")
    return value


def check_image_tasks(tasks: list[Task], arch: str, backbone: str) -> None:
    """Raise a ConfigError unless the tasks are image-level tasks (one output per image) with unique names."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.arch {arch!r}: task names must be unique (got {', '.join(names)})")
    for t in tasks:
        if t.dense:
            raise ConfigError(f"model.backbone {backbone!r} classifies images; task {t.name!r} is {t.kind!r}")


def as_backbone(module: nn.Module) -> Backbone:
    """``module`` as the :class:`Backbone` it is (a TypeError otherwise)."""
    if not isinstance(module, Backbone):
        raise TypeError(f"expected a Backbone, got {type(module).__name__}")
    return module


def backbones_in(container: nn.Module) -> list[Backbone]:
    """The backbone copies an ``nn.ModuleList`` or ``nn.ModuleDict`` holds, in order, typed as backbones."""
    if isinstance(container, nn.ModuleDict):
        return [as_backbone(m) for m in container.values()]
    if isinstance(container, nn.ModuleList):
        return [as_backbone(m) for m in container]
    raise TypeError(f"expected an nn.ModuleList or nn.ModuleDict of backbones, got {type(container).__name__}")


class BackboneModel(MultiTaskModel):
    """Base of the architectures written once over any backbone."""

    arch_name: str = "backbone_model"
    #: the backbone ``build_model`` gives when ``model.backbone`` is unset
    default_backbone = "segnet"

    def __init__(
        self,
        tasks: list[Task],
        width: float = 1.0,
        *,
        backbone: str = "segnet",
        in_channels: int = 3,
        pretrained: str = "none",
        align_corners: bool = False,
    ) -> None:
        super().__init__(tasks)
        if not isinstance(align_corners, bool):
            raise ConfigError(f"model.align_corners must be true or false (got {align_corners!r})")
        if BACKBONES.get(backbone).dense_heads:
            check_dense_tasks(self.tasks, self.arch_name)
        else:
            check_image_tasks(self.tasks, self.arch_name, backbone)
        self.backbone_name = backbone
        self._spec = (check_width(width), in_channels, pretrained)
        self.align_corners = align_corners

    def new_backbone(self) -> Backbone:
        """A fresh copy of the configured backbone (pretrained weights loaded into each copy)."""
        width, in_channels, pretrained = self._spec
        return build_backbone(self.backbone_name, width, in_channels, pretrained)

    def paper_layout(self) -> bool:
        """True on a ``paper_segnet`` backbone, where ``single``, ``mtan`` and ``cross_stitch`` build the MTAN
        paper's exact SegNet layout (its heads do not upsample: ``align_corners`` True is a ConfigError)."""
        if not BACKBONES.get(self.backbone_name).paper_segnet:
            return False
        refuse_align_corners(self.backbone_name, self.align_corners)
        return True

    def make_heads(self, backbone: nn.Module) -> nn.ModuleDict:
        """One ``backbone.make_head`` per task, keyed by task name (``backbone``: a :class:`Backbone`,
        typed as a module because containers such as ``nn.ModuleList`` hand them out so)."""
        return nn.ModuleDict({t.name: self.make_head(backbone, t.channels) for t in self.tasks})

    def make_head(self, backbone: nn.Module, out_channels: int) -> nn.Module:
        """``backbone``'s head for ``out_channels`` outputs, upsampling with the model's ``align_corners``."""
        return as_backbone(backbone).make_head(out_channels, align_corners=self.align_corners)

    def check_input(self, x: Tensor, backbone: nn.Module) -> None:
        """``backbone``'s input check (a one-line ConfigError for a wrong shape)."""
        as_backbone(backbone).check_input(x)
