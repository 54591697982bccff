"""Hard parameter sharing (Caruana, ICML 1993) over any backbone.

``hps``: one backbone shared by every task, one head per task (on ResNets, DeepLabV3 heads: the
"HPS" row of LibMTL's NYUv2 benchmark). On SegNet it is the MTAN paper's standard split (no
widening). The representation is the backbone's output; ``shared_parameters()`` the backbone.
(The single-task networks, ``SingleOverBackbone`` in 0.2, are :class:`mtlkit.models.single.SingleTask`.)
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from mtlkit.models.blocks import select_tasks
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("hps")
class HPS(BackboneModel):
    """One shared backbone, one head per task (hard parameter sharing)."""

    arch_name = "hps"

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
        super().__init__(
            tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained, align_corners=align_corners
        )
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


def __getattr__(name: str) -> object:
    """``SingleOverBackbone`` (0.2), deprecated: ``model.arch: single`` is one class on every backbone."""
    if name == "SingleOverBackbone":
        from mtlkit.models.single import SingleTask

        warnings.warn(
            "mtlkit.models.hps.SingleOverBackbone is deprecated; use mtlkit.models.single.SingleTask",
            DeprecationWarning,
            stacklevel=2,
        )
        return SingleTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
