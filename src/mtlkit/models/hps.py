"""Hard parameter sharing (Caruana, ICML 1993) over any backbone, and single-task networks.

``hps``: one backbone shared by every task, one head per task (on ResNets, DeepLabV3 heads: the
"HPS" row of LibMTL's NYUv2 benchmark). On SegNet it is the MTAN paper's standard split (no
widening). The representation is the backbone's output; ``shared_parameters()`` the backbone.

``SingleOverBackbone`` is ``single`` on a non-SegNet backbone: one backbone + head per task,
nothing shared (``single`` on SegNet keeps the MTAN paper's class, :mod:`mtlkit.models.single`).
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.models.blocks import select_tasks
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("hps")
class HPS(BackboneModel):
    """One shared backbone, one head per task (hard parameter sharing)."""

    arch_name = "hps"

    def __init__(self, tasks: list[Task], width: float = 1.0, *, backbone: str = "segnet",
                 in_channels: int = 3, pretrained: str = "none", align_corners: bool = False) -> None:
        super().__init__(tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained,
                         align_corners=align_corners)
        self.backbone = self.new_backbone()
        self.heads = self.make_heads(self.backbone)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The backbone's features (the one shared tensor)."""
        self.check_input(x, self.backbone)
        return [self.backbone(x)]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        return {name: self.heads[name](reps[0]) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


class SingleOverBackbone(BackboneModel):
    """One backbone + head per task, nothing shared (the single-task baseline on any backbone)."""

    arch_name = "single"
    supports_representation = False

    def __init__(self, tasks: list[Task], width: float = 1.0, *, backbone: str = "segnet",
                 in_channels: int = 3, pretrained: str = "none", align_corners: bool = False) -> None:
        super().__init__(tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained,
                         align_corners=align_corners)
        self.nets = nn.ModuleDict({t.name: self.new_backbone() for t in self.tasks})
        self.heads = nn.ModuleDict({t.name: self.make_head(self.nets[t.name], t.channels) for t in self.tasks})

    def encode(self, x: Tensor) -> list[Tensor]:
        """The image itself: every task's network starts from it."""
        self.check_input(x, next(iter(self.nets.values())))
        return [x]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        return {name: self.heads[name](self.nets[name](reps[0])) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return []
