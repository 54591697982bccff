"""Customized Gate Control (Tang et al., *Progressive Layered Extraction (PLE)*, RecSys 2020, Sec. 4.1)
over any backbone: shared experts plus each task's own experts, one gate per task.

Task t's output is its head applied to ``sum_e g_t(x)_e E_e(x)`` over its ``num_task_experts``
own backbones and the ``num_shared_experts`` shared ones (softmax gate on the input image).

Choices where the paper is loose: experts are full backbone copies (LibMTL's choice); gates read
the image pooled to a ``gate_grid`` grid (:mod:`mtlkit.models.moe`). The representation is the
shared experts' outputs (``shared_parameters()``); task experts run in ``decode`` on the image the
preceding ``encode`` kept. Gate weights (task experts first) are recorded as ``gate/<task>``.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from mtlkit.models.blocks import select_tasks
from mtlkit.models.mmoe import MMoE
from mtlkit.models.moe import Gate, mix
from mtlkit.models.over_backbone import positive_int
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("cgc")
class CGC(MMoE):
    """Shared + task-specific expert backbones, one gate per task over its own and the shared ones."""

    arch_name = "cgc"

    def __init__(
        self,
        tasks: list[Task],
        width: float = 1.0,
        *,
        backbone: str = "segnet",
        in_channels: int = 3,
        pretrained: str = "none",
        align_corners: bool = False,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        gate_grid: int = 4,
    ) -> None:
        self.num_task_experts = positive_int(num_task_experts, "num_task_experts")
        super().__init__(
            tasks,
            width,
            backbone=backbone,
            in_channels=in_channels,
            pretrained=pretrained,
            align_corners=align_corners,
            num_experts=positive_int(num_shared_experts, "num_shared_experts"),
            gate_grid=gate_grid,
        )
        self.task_experts = nn.ModuleDict(
            {t.name: nn.ModuleList([self.new_backbone() for _ in range(self.num_task_experts)]) for t in self.tasks}
        )

    def make_gates(self, in_channels: int) -> nn.ModuleDict:
        n = self.num_experts + self.num_task_experts
        return nn.ModuleDict({t.name: Gate(in_channels, n, self.gate_grid) for t in self.tasks})

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's own experts on the image, gated with the shared ones, then its head."""
        x = self.gate_input(reps)
        out = {}
        for name in select_tasks(self.tasks, tasks):
            own = [expert(x) for expert in cast(nn.ModuleList, self.task_experts[name])]
            w = self.gates[name](x)
            self.record(f"gate/{name}", w)
            out[name] = self.heads[name](mix(w, own + list(reps)))
        return out
