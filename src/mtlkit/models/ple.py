"""Progressive Layered Extraction (Tang et al., *PLE: A Novel Multi-Task Learning Model for
Personalized Recommendations*, RecSys 2020) over the stages of any backbone.

Each backbone stage is one extraction level. Every task has ``num_task_experts`` backbone copies
and all tasks share ``num_shared_experts`` more; at level i a task's experts run stage i on that
task's current features ``h_t``, the shared experts on the shared features ``h_s``. Then

    h_t <- sum_e g_t^i(h_t)_e  [task t's experts ; shared experts]_e
    h_s <- sum_e g_s^i(h_s)_e  [every task's experts ; shared experts]_e     (not after the last level)

and task t's head reads the last ``h_t``. Level 0 reads the image everywhere.

Levels: one per backbone stage, and stage 0 includes what ``begin`` does, so the dilated ResNets
have 4 levels (the stem, conv1-bn1-relu-maxpool, inside level 0 with layer1, then layer2, layer3,
layer4), SegNet 10 and ``wrn28`` 4. LibMTL (``LibMTL/architecture/PLE.py``, ResNets only) makes
the stem a level of its own, with its own experts' mix and gates: 5 levels.

Choices where the paper is loose: experts are stages of backbone copies (LibMTL's choice), each
copy keeping its own pass context (SegNet: its own pooling indices); the shared path and shared
gate follow the paper (LibMTL instead runs the shared experts on each task's features and has no
shared gate); gates read their level's input pooled to a ``gate_grid`` grid (LibMTL: a linear
layer over the whole flattened level input, which fixes the input size). Every task's loss
reaches the shared path, so there is no single shared representation: ``shared_parameters()`` is
every parameter some other task's loss also reaches (all but each task's last two gates, its
last-level experts and its head; LibMTL: the shared experts only). Gate weights are recorded as
``gate/<task>/level<i>`` and ``gate/shared/level<i>``. See ``docs/differences.md``.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from mtlkit.models.backbones import Backbone
from mtlkit.models.blocks import select_tasks
from mtlkit.models.moe import Gate, mix
from mtlkit.models.over_backbone import BackboneModel, backbones_in, positive_int
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


def run_stage(expert: Backbone, i: int, h: Tensor, ctx: dict[int, Any], key: int) -> Tensor:
    """Stage ``i`` of ``expert`` on ``h``; at stage 0 ``h`` is the image and the pass context is created."""
    if i == 0:
        h, ctx[key] = expert.begin(h)
    return expert.stage(i, h, ctx[key])


@ARCHITECTURES.register("ple")
class PLE(BackboneModel):
    """Task and shared experts at every backbone stage, with per-level task and shared gates."""

    arch_name = "ple"
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
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        gate_grid: int = 4,
    ) -> None:
        super().__init__(
            tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained, align_corners=align_corners
        )
        ns = positive_int(num_shared_experts, "num_shared_experts")
        nt = positive_int(num_task_experts, "num_task_experts")
        grid = positive_int(gate_grid, "gate_grid")
        self.shared_experts = nn.ModuleList([self.new_backbone() for _ in range(ns)])
        self.task_experts = nn.ModuleDict(
            {t.name: nn.ModuleList([self.new_backbone() for _ in range(nt)]) for t in self.tasks}
        )
        proto = backbones_in(self.shared_experts)[0]
        self.levels: int = proto.num_stages
        level_in = (in_channels,) + tuple(proto.channels[:-1])
        self.task_gates = nn.ModuleDict(
            {t.name: nn.ModuleList([Gate(level_in[i], nt + ns, grid) for i in range(self.levels)]) for t in self.tasks}
        )
        n_all = nt * len(self.tasks) + ns
        self.shared_gates = nn.ModuleList([Gate(level_in[i], n_all, grid) for i in range(self.levels - 1)])
        self.heads = self.make_heads(proto)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Every level for every task; returns each task's final features (task order)."""
        self.check_input(x, self.shared_experts[0])
        names = [t.name for t in self.tasks]
        h = {name: x for name in names}
        hs = x
        ctx: dict[int, Any] = {}
        for i in range(self.levels):
            shared = [run_stage(e, i, hs, ctx, id(e)) for e in backbones_in(self.shared_experts)]
            own = {n: [run_stage(e, i, h[n], ctx, id(e)) for e in backbones_in(self.task_experts[n])] for n in names}
            new_h = {}
            for n in names:
                w = cast(nn.ModuleList, self.task_gates[n])[i](h[n])
                self.record(f"gate/{n}/level{i}", w)
                new_h[n] = mix(w, own[n] + shared)
            if i < self.levels - 1:
                w = self.shared_gates[i](hs)
                self.record(f"gate/shared/level{i}", w)
                hs = mix(w, [o for n in names for o in own[n]] + shared)
            h = new_h
        return [h[n] for n in names]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        index = {t.name: i for i, t in enumerate(self.tasks)}
        return {name: self.heads[name](reps[index[name]]) for name in select_tasks(self.tasks, tasks)}

    def task_own_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters only task ``name``'s loss reaches: its last two gates, last-level experts, head."""
        last = self.levels - 1
        gates = cast(nn.ModuleList, self.task_gates[name])
        params = list(self.heads[name].parameters()) + list(gates[last].parameters())
        if last >= 1:
            params += list(gates[last - 1].parameters())
        for e in backbones_in(self.task_experts[name]):
            params += stage_parameters(e, last)
        return params

    def shared_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for t in self.tasks for p in self.task_own_parameters(t.name)}
        return [p for p in self.parameters() if id(p) not in own]


def stage_parameters(backbone: Backbone, i: int) -> list[nn.Parameter]:
    """The parameters stage ``i`` of ``backbone`` uses (found by running nothing: by module ownership)."""
    return list(backbone.stage_module(i).parameters())
