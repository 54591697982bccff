"""Cross-stitch networks (Misra et al., CVPR 2016), written once over the staged backbones.

One backbone per task (each with its own stem); after the stages, a cross-stitch unit mixes the K
tasks' feature maps. On ``segnet`` (``Backbone.paper_segnet``) this is the MTAN paper's baseline
exactly: a unit after every stage but the last (the pooled output of each encoder stage and the
output of decoder stages 4 to 1, i.e. before every unpooling: 9 stitch points, as in the official
MTAN code; each network unpools with its own indices), the parameters named as the paper model's
(``nets.<task>.enc.*``, ``stitches.enc0`` ... ``stitches.dec1``; pinned by
``tests/models/test_segnet_checksums.py``). On the other backbones there is a unit after every stage, the
last included (dilated ResNets: after layer1..layer4, 4 units, the heads read the stitched layer4
features; ``wrn28``: after the stem and stage1..stage3), the list ``stitches[0]`` ..., except where
the backbone names its stitch points (``Backbone.stitch_stages``): on ``alexnet`` this is the
cross-stitch paper's own system, two AlexNets with units after pool1, pool2, pool5, fc6 and fc7
(recorded as ``alpha/pool1`` ... ``alpha/fc7``), each task's FCN-32s head on its stitched fc7
(see :mod:`mtlkit.models.backbones.alexnet`). Two variants (``variant`` option):

- ``misra`` (default): ``x~_i = sum_k alpha[i, k] x_k`` (alpha: K x K, or K x K x C with
  ``per_channel=True``), generalising Misra et al.'s 2 x 2 unit to K tasks. alpha starts at
  ``alpha_s`` on the diagonal and ``(1 - alpha_s) / (K - 1)`` off it, so every row sums to 1 (a
  single task gets 1); the alphas train at the learning rate times ``alpha_lr_mult`` (default 100;
  Misra et al. scale it by 10^2 to 10^3). For two tasks, ``alpha_s`` is the paper's alpha_S and
  ``1 - alpha_s`` its alpha_D. The defaults (alpha_S, alpha_D) = (0.9, 0.1) and a 10^2 scale lie in
  the range the paper's ablations favour; its ablation grids are the sweeps
  ``presets/sweeps/nyuv2_cross_stitch_alpha_init.yaml`` and ``..._alpha_lr.yaml``.
- ``mtan``: the MTAN paper's cross-stitch baseline (the authors' code): one learned K-vector ``w``
  per stitch point, shared by all tasks, ``x~_i = sum_k w[k] x_k`` for every i, initialised to
  ones and trained at the base learning rate (``alpha_lr_mult`` default 1).

Where LibMTL differs (``LibMTL/architecture/Cross_stitch.py``, ResNets only): it stitches after
layer1..layer3 only (its fourth unit is allocated but never used, so the heads read unmixed
layer4 features), starts every alpha at 1 (each column's input is the sum of all K columns) and
trains them at the base learning rate. See ``docs/differences.md``.

Every task's loss depends on every network through the stitches, so there is no shared
representation; ``shared_parameters()`` is everything but the heads. Alphas are recorded as
``alpha/<point>`` (``enc0``-``enc4``, ``dec4``-``dec1`` on SegNet, ``stage<i>`` elsewhere) and
returned by ``stitch_alphas()`` as K x K matrices (the ``mtan`` variant's vector repeated in every row).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.segnet import trunk_stage, trunk_stages
from mtlkit.models.blocks import (
    NUM_LEVELS,
    SEGNET_CHANNELS,
    SEGNET_DEPTHS,
    SegNetTrunk,
    check_input,
    init_weights,
    make_heads,
    scale_channels,
    select_tasks,
)
from mtlkit.models.over_backbone import BackboneModel, as_backbone
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task

VARIANTS = ("misra", "mtan")


class CrossStitchUnit(nn.Module):
    """Learned K x K (or K x K x C) linear mix of K same-shaped feature maps (Misra et al.)."""

    def __init__(self, num_tasks: int, channels: int, alpha_s: float, per_channel: bool) -> None:
        super().__init__()
        k = num_tasks
        diag = 1.0 if k == 1 else alpha_s
        off = 0.0 if k == 1 else (1.0 - alpha_s) / (k - 1)
        alpha = off + (diag - off) * torch.eye(k)
        if per_channel:
            alpha = alpha[:, :, None].repeat(1, 1, channels)
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """``out[i] = sum_k alpha[i, k] * xs[k]`` (per channel when alpha has a channel axis)."""
        x = torch.stack(xs)
        alpha = self.alpha.to(x.dtype)
        if alpha.dim() == 2:
            y = torch.einsum("ik,kbchw->ibchw", alpha, x)
        else:
            y = torch.einsum("ikc,kbchw->ibchw", alpha, x)
        return list(y.unbind(0))

    def matrix(self) -> Tensor:
        """The K x K (x C) mixing weights."""
        return self.alpha


class SharedStitchUnit(nn.Module):
    """The MTAN authors' unit: one K-vector ``w`` (init ones); every task gets ``sum_k w[k] xs[k]``."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(num_tasks))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """The same mix ``sum_k w[k] * xs[k]`` for each of the K tasks."""
        mixed = torch.einsum("k,kbchw->bchw", self.alpha.to(xs[0].dtype), torch.stack(xs))
        return [mixed] * len(xs)

    def matrix(self) -> Tensor:
        """The equivalent K x K matrix: ``w`` in every row."""
        k = self.alpha.numel()
        return self.alpha.unsqueeze(0).expand(k, k)


#: the paper's SegNet stitch points, one after each stage but the last
SEGNET_POINTS = tuple(f"enc{j}" for j in range(NUM_LEVELS)) + tuple(f"dec{j}" for j in range(NUM_LEVELS - 1, 0, -1))


def check_options(
    variant: str, alpha_s: float | None, per_channel: bool, alpha_lr_mult: float | None
) -> tuple[float, float]:
    """``alpha_s`` and ``alpha_lr_mult`` with the variant's defaults; a ConfigError for a bad option."""
    if variant not in VARIANTS:
        raise ConfigError(f"model.options.variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    if variant == "mtan" and (alpha_s is not None or per_channel):
        raise ConfigError(
            "model.options.alpha_s and per_channel belong to variant 'misra'; "
            "variant 'mtan' learns one K-vector per stitch point, initialised to ones"
        )
    alpha_s = 0.9 if alpha_s is None else alpha_s
    if isinstance(alpha_s, bool) or not isinstance(alpha_s, (int, float)) or not 0.0 <= alpha_s <= 1.0:
        raise ConfigError(f"model.options.alpha_s must be a number in [0, 1] (got {alpha_s!r})")
    if not isinstance(per_channel, bool):
        raise ConfigError(f"model.options.per_channel must be true or false (got {per_channel!r})")
    if alpha_lr_mult is None:
        alpha_lr_mult = 100.0 if variant == "misra" else 1.0
    if isinstance(alpha_lr_mult, bool) or not isinstance(alpha_lr_mult, (int, float)) or not alpha_lr_mult > 0:
        raise ConfigError(f"model.options.alpha_lr_mult must be a positive number (got {alpha_lr_mult!r})")
    return float(alpha_s), float(alpha_lr_mult)


@ARCHITECTURES.register("cross_stitch")
class CrossStitch(BackboneModel):
    """One backbone per task, joined by cross-stitch units between stages (9 points on segnet, 5 on alexnet)."""

    records = ("stitch",)
    single_task_reference = "single"
    label = "Cross-Stitch"

    arch_name = "cross_stitch"
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
        variant: str = "misra",
        alpha_s: float | None = None,
        per_channel: bool = False,
        alpha_lr_mult: float | None = None,
    ) -> None:
        super().__init__(
            tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained, align_corners=align_corners
        )
        alpha, self.alpha_lr_mult = check_options(variant, alpha_s, per_channel, alpha_lr_mult)
        self.variant = variant
        self.paper = self.paper_layout()
        if self.paper:
            c = scale_channels(SEGNET_CHANNELS, width)
            trunks = [SegNetTrunk(in_channels, c, SEGNET_DEPTHS) for _ in self.tasks]
            self.nets = nn.ModuleDict({t.name: net for t, net in zip(self.tasks, trunks)})
            channels: tuple[int, ...] = trunk_stages(trunks[0])[0][:-1]
            self.num_stages = len(channels) + 1
        else:
            copies = [self.new_backbone() for _ in self.tasks]
            self.nets = nn.ModuleDict({t.name: net for t, net in zip(self.tasks, copies)})
            self.num_stages = copies[0].num_stages
            points = copies[0].stitch_stages
            #: the stages a unit follows (the backbone's ``stitch_stages``, else every one)
            self.stitch_at = tuple(range(self.num_stages)) if points is None else tuple(points)
            channels = tuple(copies[0].channels[i] for i in self.stitch_at)
        if self.paper:
            self.stitch_at = tuple(range(len(channels)))
        #: what each stitch point is called in records and ``stitch_alphas``
        self.point_labels = (
            SEGNET_POINTS
            if self.paper
            else (copies[0].stitch_names or tuple(f"stage{i}" for i in range(len(channels))))
        )
        k = len(self.tasks)

        def unit(ch: int) -> nn.Module:
            return SharedStitchUnit(k) if variant == "mtan" else CrossStitchUnit(k, ch, alpha, per_channel)

        units = [unit(ch) for ch in channels]
        # named by point on SegNet (the paper model's keys), a list elsewhere (0.2's keys and indexing)
        self.stitches: nn.ModuleDict | nn.ModuleList = (
            nn.ModuleDict(dict(zip(SEGNET_POINTS, units))) if self.paper else nn.ModuleList(units)
        )
        if self.paper:
            self.heads = make_heads(self.tasks, trunks[0].out_channels)
            init_weights(self)
        else:
            self.heads = self.make_heads(copies[0])

    def _stage(self, net: nn.Module, i: int, h: Tensor, ctx: Any) -> Tensor:
        return trunk_stage(net, i, h, ctx) if isinstance(net, SegNetTrunk) else as_backbone(net).stage(i, h, ctx)

    def units(self) -> list[CrossStitchUnit | SharedStitchUnit]:
        """The stitch units, in stage order."""
        units = self.stitches.values() if isinstance(self.stitches, nn.ModuleDict) else self.stitches
        return [cast(CrossStitchUnit | SharedStitchUnit, u) for u in units]

    def encode(self, x: Tensor) -> list[Tensor]:
        """All K stitched networks run together; returns each task's final feature map (task order)."""
        nets = list(self.nets.values())
        if self.paper:
            check_input(x)
            starts: list[tuple[Tensor, Any]] = [(x, {}) for _ in nets]
        else:
            self.check_input(x, nets[0])
            starts = [as_backbone(net).begin(x) for net in nets]
        hs, ctxs = [h for h, _ in starts], [c for _, c in starts]
        units = dict(zip(self.stitch_at, range(len(self.stitch_at))))
        listed = self.units()
        for i in range(self.num_stages):
            hs = [self._stage(net, i, h, ctx) for net, h, ctx in zip(nets, hs, ctxs)]
            if i in units:
                j = units[i]
                self.record(f"alpha/{self.point_labels[j]}", listed[j].matrix())
                hs = listed[j](hs)
        return hs

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """The requested tasks' heads on their networks' outputs."""
        index = {t.name: i for i, t in enumerate(self.tasks)}
        return {name: self.heads[name](reps[index[name]]) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the heads: each task's loss depends on all networks via the stitches."""
        heads = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def alpha_parameters(self) -> list[nn.Parameter]:
        """The cross-stitch weights (matrices, or the ``mtan`` variant's vectors), one per stitch point."""
        return [unit.alpha for unit in self.units()]

    def stitch_alphas(self) -> dict[str, Tensor]:
        """A detached copy of every stitch point's K x K (x C) alpha matrix, keyed by point (for plots)."""
        return {label: unit.matrix().detach().clone() for label, unit in zip(self.point_labels, self.units())}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Network weights at ``lr``; the alphas at ``lr * alpha_lr_mult``."""
        alphas = {id(p) for p in self.alpha_parameters()}
        weights = [p for p in self.parameters() if id(p) not in alphas]
        return [
            {"params": weights, "lr": lr, "name": "weights"},
            {"params": self.alpha_parameters(), "lr": lr * self.alpha_lr_mult, "name": "cross_stitch_alphas"},
        ]
