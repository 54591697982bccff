"""Cross-stitch networks (Misra et al., CVPR 2016) over any staged backbone.

``cross_stitch`` on a non-SegNet backbone: one backbone per task (each with its own stem); after
every stage, the last included, a :class:`~mtlkit.models.cross_stitch.CrossStitchUnit` mixes the K
tasks' feature maps, ``x~_i = sum_k alpha[i, k] x_k``. On the dilated ResNets that is after
layer1, layer2, layer3 and layer4 (4 units; the heads read the stitched layer4 features), on
``wrn28`` after the stem and stage1..stage3. The units are initialised and trained as in
:mod:`mtlkit.models.cross_stitch` (``alpha_s`` on the diagonal, ``(1 - alpha_s) / (K - 1)`` off it;
the alphas at ``lr * alpha_lr_mult``). ``cross_stitch`` on SegNet keeps the MTAN paper's class.

Where LibMTL differs (``LibMTL/architecture/Cross_stitch.py``, ResNets only): it stitches after
layer1..layer3 only (its fourth unit is allocated but never used, so the heads read unmixed
layer4 features), starts every alpha at 1 (each column's input is the sum of all K columns) and
trains them at the base learning rate. See ``docs/differences.md``.

No shared representation; ``shared_parameters()`` is everything but the heads (as LibMTL's
encoder). Alphas are recorded as ``alpha/stage<i>``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.blocks import select_tasks
from mtlkit.models.cross_stitch import CrossStitchUnit
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.tasks import Task


class StagedCrossStitch(BackboneModel):
    """One backbone per task, joined by cross-stitch units after every stage."""

    records = ("stitch",)

    arch_name = "cross_stitch"
    supports_representation = False

    def __init__(self, tasks: list[Task], width: float = 1.0, *, backbone: str = "resnet50_dilated",
                 in_channels: int = 3, pretrained: str = "none", align_corners: bool = False, alpha_s: float = 0.9,
                 per_channel: bool = False, alpha_lr_mult: float = 100.0) -> None:
        super().__init__(tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained,
                         align_corners=align_corners)
        if isinstance(alpha_s, bool) or not isinstance(alpha_s, (int, float)) or not 0.0 <= alpha_s <= 1.0:
            raise ConfigError(f"model.options.alpha_s must be a number in [0, 1] (got {alpha_s!r})")
        if not isinstance(per_channel, bool):
            raise ConfigError(f"model.options.per_channel must be true or false (got {per_channel!r})")
        if isinstance(alpha_lr_mult, bool) or not isinstance(alpha_lr_mult, (int, float)) or not alpha_lr_mult > 0:
            raise ConfigError(f"model.options.alpha_lr_mult must be a positive number (got {alpha_lr_mult!r})")
        self.alpha_lr_mult = float(alpha_lr_mult)
        self.nets = nn.ModuleDict({t.name: self.new_backbone() for t in self.tasks})
        first = next(iter(self.nets.values()))
        k = len(self.tasks)
        self.stitches = nn.ModuleList(
            [CrossStitchUnit(k, ch, float(alpha_s), per_channel) for ch in first.channels])
        self.heads = self.make_heads(first)

    def encode(self, x: Tensor) -> list[Tensor]:
        """All K stitched networks together; returns each task's final features (task order)."""
        nets = list(self.nets.values())
        self.check_input(x, nets[0])
        starts = [net.begin(x) for net in nets]
        hs, ctxs = [h for h, _ in starts], [c for _, c in starts]
        for i, unit in enumerate(self.stitches):
            hs = [net.stage(i, h, ctx) for net, h, ctx in zip(nets, hs, ctxs)]
            self.record(f"alpha/stage{i}", unit.alpha)
            hs = unit(hs)
        return hs

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        index = {t.name: i for i, t in enumerate(self.tasks)}
        return {name: self.heads[name](reps[index[name]]) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        heads = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def alpha_parameters(self) -> list[nn.Parameter]:
        return [unit.alpha for unit in self.stitches]

    def stitch_alphas(self) -> dict[str, Tensor]:
        """A detached copy of every stitch point's alpha matrix, keyed ``stage<i>``."""
        return {f"stage{i}": unit.alpha.detach().clone() for i, unit in enumerate(self.stitches)}

    def param_groups(self, lr: float) -> list[dict]:
        """Network weights at ``lr``; the alphas at ``lr * alpha_lr_mult``."""
        alphas = {id(p) for p in self.alpha_parameters()}
        weights = [p for p in self.parameters() if id(p) not in alphas]
        return [
            {"params": weights, "lr": lr, "name": "weights"},
            {"params": self.alpha_parameters(), "lr": lr * self.alpha_lr_mult, "name": "cross_stitch_alphas"},
        ]
