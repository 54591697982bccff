"""Multi-gate Mixture-of-Experts (Ma et al., *Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts*, KDD 2018) over any backbone.

``num_experts`` whole backbones are shared by every task; task t's output is its head applied to
``sum_e g_t(x)_e E_e(x)`` with ``g_t`` a per-sample softmax gate on the input image.

Where the paper is loose (it gates vectors, not images): experts are full backbone copies (as
LibMTL; each loads the pretrained weights); gates read the image average-pooled to a
``gate_grid`` x ``gate_grid`` grid (:mod:`mtlkit.models.moe`), not the flattened image. The
representation is the list of expert outputs; ``shared_parameters()`` the experts; gates and
heads are task-specific. ``decode`` reads the gate input that the preceding ``encode`` of the
same batch kept (``forward`` and the trainer always pair them). Gate weights are recorded as
``gate/<task>``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.blocks import select_tasks
from mtlkit.models.moe import Gate, mix
from mtlkit.models.over_backbone import BackboneModel, positive_int
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("mmoe")
class MMoE(BackboneModel):
    """Shared expert backbones mixed by one softmax gate per task."""

    arch_name = "mmoe"

    def __init__(
        self,
        tasks: list[Task],
        width: float = 1.0,
        *,
        backbone: str = "segnet",
        in_channels: int = 3,
        pretrained: str = "none",
        align_corners: bool = False,
        num_experts: int = 2,
        gate_grid: int = 4,
    ) -> None:
        super().__init__(
            tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained, align_corners=align_corners
        )
        self.num_experts = positive_int(num_experts, "num_experts")
        self.gate_grid = positive_int(gate_grid, "gate_grid")
        self.experts = nn.ModuleList([self.new_backbone() for _ in range(self.num_experts)])
        self.gates = self.make_gates(in_channels)
        self.heads = self.make_heads(self.experts[0])
        self._gate_input: Tensor | None = None

    def make_gates(self, in_channels: int) -> nn.ModuleDict:
        """One softmax :class:`~mtlkit.models.moe.Gate` per task over the experts."""
        return nn.ModuleDict({t.name: Gate(in_channels, self.num_experts, self.gate_grid) for t in self.tasks})

    def encode(self, x: Tensor) -> list[Tensor]:
        """Every expert's features (shared by all tasks); keeps ``x`` for the gates."""
        self.check_input(x, self.experts[0])
        self._gate_input = x
        return [expert(x) for expert in self.experts]

    def gate_input(self, reps: list[Tensor]) -> Tensor:
        """The image the last ``encode`` saw; a ConfigError when ``decode`` is called without one."""
        x = self._gate_input
        if x is None or x.shape[0] != reps[0].shape[0]:
            raise ConfigError(f"model.arch {self.arch_name!r}: decode must follow encode of the same batch")
        return x

    def task_weights(self, name: str, x: Tensor) -> Tensor:
        """Task ``name``'s ``(B, num_experts)`` expert weights for the images ``x``."""
        return self.gates[name](x)

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's gated mix of the experts, then its head."""
        x = self.gate_input(reps)
        out = {}
        for name in select_tasks(self.tasks, tasks):
            w = self.task_weights(name, x)
            self.record(f"gate/{name}", w)
            out[name] = self.heads[name](mix(w, reps))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())
