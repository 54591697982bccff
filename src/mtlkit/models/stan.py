"""Single-Task Attention Network: the MTAN paper's STAN baseline, one one-task MTAN per task.

``nets[task]`` is exactly :class:`~mtlkit.models.mtan.MTAN` built for that task alone (a full
SegNet, one attention path, one head), so a one-task MTAN's ``state_dict`` loads into it and gives
the same outputs. Nothing is shared: no shared representation and ``shared_parameters()`` is
empty. Attention masks are recorded under the same keys as MTAN's (``attention/<task>/enc<j>``).
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.models.blocks import check_dense_tasks, check_input, check_width, select_tasks
from mtlkit.models.mtan import MTAN
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("stan")
class STAN(MultiTaskModel):
    """One single-task MTAN per task, nothing shared (the MTAN paper's STAN baseline)."""

    records = ("attention",)
    single_task_reference = "single"
    own_backbone = "segnet"
    label = "STAN"

    supports_representation = False

    def __init__(self, tasks: list[Task], width: float = 1.0, *, in_channels: int = 3) -> None:
        super().__init__(tasks)
        check_dense_tasks(self.tasks, "stan")
        width = check_width(width)
        self.nets = nn.ModuleDict({t.name: MTAN([t], width, in_channels=in_channels) for t in self.tasks})

    def encode(self, x: Tensor) -> list[Tensor]:
        """The image itself: every task's network starts from it (nothing is shared)."""
        check_input(x)
        return [x]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Run only the requested tasks' networks (recording their masks when asked)."""
        out = {}
        for name in select_tasks(self.tasks, tasks):
            net = cast(MTAN, self.nets[name])
            if self._record:
                with net.recording() as masks:
                    out[name] = net(reps[0])[name]
                self.recorded.update(masks)
            else:
                out[name] = net(reps[0])[name]
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: no parameter serves more than one task."""
        return []
