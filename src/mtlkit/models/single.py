"""Single-task baseline: one whole network (backbone + head) per task, nothing shared.

Trained jointly (one optimiser, summed losses) the tasks cannot interact, which equals training
them one at a time. There is no shared representation and no shared parameter:
``shared_parameters()`` is empty, so gradient-level weighting methods have nothing to balance.

On ``segnet`` (``Backbone.paper_segnet``) each task's network is the MTAN paper's one-task
SegNet, :class:`~mtlkit.models.segnet.SegNet`, heads inside it (``nets.<task>.trunk.*``,
``nets.<task>.heads.<task>.*``: the paper model's parameter names, pinned by
``tests/models/test_segnet_checksums.py``). On the other backbones ``nets.<task>`` is the backbone and
``heads.<task>`` its head (``Backbone.make_head``).
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.models.blocks import check_input, select_tasks
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.models.segnet import SegNet
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("single")
class SingleTask(BackboneModel):
    """One backbone + head per task, nothing shared (the MTAN paper's Single-Task baseline on ``segnet``)."""

    single_task_reference = "single"
    label = "Single-Task"
    reference_names = ("One Task",)

    arch_name = "single"
    supports_representation = False

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
        self.paper = self.paper_layout()
        if self.paper:
            self.nets = nn.ModuleDict({t.name: SegNet([t], width, in_channels=in_channels) for t in self.tasks})
        else:
            self.nets = nn.ModuleDict({t.name: self.new_backbone() for t in self.tasks})
            self.heads = nn.ModuleDict({t.name: self.make_head(self.nets[t.name], t.channels) for t in self.tasks})

    def encode(self, x: Tensor) -> list[Tensor]:
        """The image itself: every task's network starts from it (nothing is shared)."""
        if self.paper:
            check_input(x)
        else:
            self.check_input(x, self.nets[self.tasks[0].name])
        return [x]

    def run(self, name: str, x: Tensor) -> Tensor:
        """Task ``name``'s whole network on ``x``."""
        net = self.nets[name]
        if isinstance(net, SegNet):
            return net(x)[name]
        return self.heads[name](net(x))

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Run only the requested tasks' networks."""
        return {name: self.run(name, reps[0]) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: no parameter serves more than one task."""
        return []
