"""Hard parameter sharing (Caruana, ICML 1993) over any backbone.

``hps``: one backbone shared by every task, one head per task (on ResNets, DeepLabV3 heads: the
"HPS" row of LibMTL's NYUv2 benchmark). On SegNet it is the MTAN paper's standard split (no
widening). The representation is the backbone's output; ``shared_parameters()`` the backbone.

``branch_at`` (``model.options.branch_at``, a stage name of the backbone: ``conv1`` ... ``fc7`` on
``alexnet``, ``layer1`` ... ``layer4`` on the ResNets, ``enc0`` ... ``dec0`` on ``segnet``) gives
Misra et al.'s "Split" baselines (*Cross-stitch Networks*, CVPR 2016, Fig. 2: Split conv1 ... Split
fc7): the stages up to and including ``branch_at`` are shared, and each task has its own copy of the
stages after it (then its head). The representation is then the shared stages' output. Unset (the
default) shares the whole backbone, as before; naming the last stage builds the same network.
A task's copy is a whole backbone whose shared stages are emptied (their parameters and buffers
removed), so its state-dict keys are the backbone's own (``towers.<task>.layer4...``).
(The single-task networks, ``SingleOverBackbone`` in 0.2, are :class:`mtlkit.models.single.SingleTask`.)
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import Backbone
from mtlkit.models.blocks import select_tasks
from mtlkit.models.over_backbone import BackboneModel, as_backbone
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
        branch_at: str | None = None,
    ) -> None:
        super().__init__(
            tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained, align_corners=align_corners
        )
        self.backbone = self.new_backbone()
        #: index of the last shared stage (the backbone's last when ``branch_at`` is unset)
        self.branch_index = branch_index(self.backbone, branch_at)
        self.branch_at = branch_at
        self._ctx: Any = None
        if self.branched:
            last = self.backbone.num_stages - 1
            stages = range(self.branch_index + 1, last + 1)
            towers = {t.name: self.new_backbone() for t in self.tasks}
            for tower in towers.values():
                empty_stages(tower, range(self.branch_index + 1))
            empty_stages(self.backbone, stages, stem=False)
            self.towers = nn.ModuleDict(towers)
            self.heads = nn.ModuleDict({t.name: self.make_head(self.towers[t.name], t.channels) for t in self.tasks})
        else:
            self.heads = self.make_heads(self.backbone)

    @property
    def branched(self) -> bool:
        """True when tasks have stages of their own (``branch_at`` names a stage before the last)."""
        return self.branch_index < self.backbone.num_stages - 1

    def encode(self, x: Tensor) -> list[Tensor]:
        """The shared stages' output (the one shared tensor): the backbone's features when unbranched."""
        self.check_input(x, self.backbone)
        if not self.branched:
            return [self.backbone(x)]
        h, ctx = self.backbone.begin(x)
        for i in range(self.branch_index + 1):
            h = self.backbone.stage(i, h, ctx)
        self._ctx = ctx  # what the task stages read (SegNet's pooling indices), kept for decode
        return [h]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each task's own stages (when branched), then its head."""
        if not self.branched:
            return {name: self.heads[name](reps[0]) for name in select_tasks(self.tasks, tasks)}
        out = {}
        for name in select_tasks(self.tasks, tasks):
            tower = as_backbone(self.towers[name])
            h, ctx = reps[0], copy.copy(self._ctx)  # each tower writes its own pooling indices
            for i in range(self.branch_index + 1, tower.num_stages):
                h = tower.stage(i, h, ctx)
            out[name] = self.heads[name](h)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


def branch_index(backbone: Backbone, branch_at: str | None) -> int:
    """The index of stage ``branch_at`` of ``backbone`` (its last stage when None); a ConfigError if unknown."""
    names = backbone.stage_labels()
    if branch_at is None:
        return len(names) - 1
    if not isinstance(branch_at, str) or branch_at not in names:
        raise ConfigError(
            f"model.options.branch_at: {branch_at!r} is not a stage of the {backbone.name} backbone "
            f"(one of {', '.join(names)})"
        )
    return names.index(branch_at)


def empty_stages(backbone: Backbone, stages: range, *, stem: bool = True) -> None:
    """Remove the parameters and buffers of ``backbone``'s ``stages`` (a copy that never runs them).

    With ``stem`` and stage 0 among ``stages``, what ``begin`` uses (the parameters no stage module
    holds: the ResNets' conv1/bn1) goes too. The modules stay (their keys are the backbone's), empty.
    """
    modules = [m for i in stages for m in backbone.stage_module(i).modules()]
    if stem and 0 in stages:
        staged = {id(m) for i in range(backbone.num_stages) for m in backbone.stage_module(i).modules()}
        modules += [m for m in backbone.modules() if id(m) not in staged]
    for m in modules:  # each module's own tensors only: a container's children are listed on their own
        for name in list(m._parameters):
            m._parameters[name] = None
        for name in list(m._buffers):
            m._buffers[name] = None


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
