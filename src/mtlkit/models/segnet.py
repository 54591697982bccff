"""Hard parameter sharing on SegNet: one trunk for every task, split into task heads at the last layer.

This is the MTAN paper's "Split" baseline family; :mod:`mtlkit.models.split` registers its wide
and deep variants, and :mod:`mtlkit.models.single` builds one of these per task.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.models.blocks import (
    SEGNET_CHANNELS,
    SEGNET_DEPTHS,
    SegNetTrunk,
    check_dense_tasks,
    check_input,
    check_width,
    init_weights,
    make_heads,
    scale_channels,
    select_tasks,
)
from mtlkit.tasks import Task


class SegNet(MultiTaskModel):
    """A SegNet trunk shared by all tasks plus one head per task; the representation is its output.

    Subclasses change ``base_channels`` (split_wide) or ``depth_factor`` (split_deep, which
    doubles every conv layer of every stage).
    """

    single_task_reference = "single"
    own_backbone = "segnet"

    arch_name = "segnet"
    base_channels: tuple[int, ...] = SEGNET_CHANNELS
    depth_factor = 1

    def __init__(self, tasks: list[Task], width: float = 1.0, *, in_channels: int = 3) -> None:
        super().__init__(tasks)
        check_dense_tasks(self.tasks, self.arch_name)
        channels = scale_channels(self.base_channels, check_width(width))
        depths = tuple(d * self.depth_factor for d in SEGNET_DEPTHS)
        self.trunk = SegNetTrunk(in_channels, channels, depths)
        self.heads = make_heads(self.tasks, self.trunk.out_channels)
        init_weights(self)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The trunk's final feature map (the last shared tensor), as a one-element list."""
        check_input(x)
        return [self.trunk(x)]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's head applied to the shared feature map."""
        return {name: self.heads[name](reps[0]) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk (everything but the heads)."""
        return list(self.trunk.parameters())
