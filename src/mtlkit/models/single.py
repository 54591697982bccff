"""Single-task baseline: one full SegNet (trunk + head) per task, nothing shared.

Trained jointly (one optimiser, summed losses) the tasks cannot interact, which equals training
them one at a time. There is no shared representation and no shared parameter:
``shared_parameters()`` is empty, so gradient-level weighting methods have nothing to balance.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.models.blocks import check_dense_tasks, check_input, check_width, select_tasks
from mtlkit.models.segnet import SegNet
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("single")
class SingleTask(MultiTaskModel):
    """One full SegNet per task, nothing shared (the MTAN paper's Single-Task baseline)."""

    single_task_reference = "single"

    supports_representation = False

    def __init__(self, tasks: list[Task], width: float = 1.0, *, in_channels: int = 3) -> None:
        super().__init__(tasks)
        check_dense_tasks(self.tasks, "single")
        width = check_width(width)
        self.nets = nn.ModuleDict({t.name: SegNet([t], width, in_channels=in_channels) for t in self.tasks})

    def encode(self, x: Tensor) -> list[Tensor]:
        """The image itself: every task's network starts from it (nothing is shared)."""
        check_input(x)
        return [x]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Run only the requested tasks' networks."""
        return {name: self.nets[name](reps[0])[name] for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: no parameter serves more than one task."""
        return []
