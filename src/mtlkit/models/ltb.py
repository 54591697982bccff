"""Learning to Branch (Guo, Lee & Ulbricht, *Learning to Branch for Multi-Task Learning*, ICML 2020)
over the stages of any backbone.

One backbone column per task. Before every stage i > 0, column t's input is a weighted choice
among the columns' stage i-1 outputs, ``sum_p w[i, t, p] h_p``, with ``w[i, t, :]`` a
Gumbel-softmax sample of learned branch logits ``alpha[i, t, :]`` (straight-through, ``hard``):
during training each column draws one parent per step; in evaluation it takes the most likely
parent, so the network is the tree the logits encode. Branch logits start equal (every tree
equally likely).

Branch points: one before each stage but the first, ``num_stages - 1`` in all. Stage 0 includes
what ``begin`` does, so on the dilated ResNets (stages layer1..layer4, the stem inside layer1's
stage) the columns branch before layer2, layer3 and layer4 (3 points; each column's stem and
layer1 read only the image and its own column). LibMTL (``LibMTL/architecture/LTB.py``) counts
the stem as its own level and also branches between the stem and layer1 (4 points).

Schedule (LibMTL's; the paper gives none for this setting). During the first ``warmup`` fraction
of the epochs every column reads the ``softmax(alpha)``-weighted mean of all parents (uniform at
the start; LibMTL sums them with fixed weights: the mean keeps the activations' scale, and the
soft weights let the branch logits learn from the first step). Afterwards the temperature is
``tau = tau_scale * epochs / sqrt(epoch + 1)`` (LibMTL: ``epochs / 20 / sqrt(epoch + 1)``, 10 down
to 0.7 over 200 epochs). The trainer tells the model the epoch through ``set_epoch(epoch,
epochs)``; before that (``epochs`` unknown) there is no warm-up and ``tau = 1``. LibMTL also
samples (and, in its warm-up, sums) at evaluation; here evaluation takes the argmax tree.

Every task's loss can reach every column, so there is no shared representation;
``shared_parameters()`` is all but the heads and each column's last stage (LibMTL: the whole
encoder). The branch probabilities ``softmax(alpha)`` are recorded as ``branch/stage<i>``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.blocks import select_tasks
from mtlkit.models.over_backbone import BackboneModel, backbones_in
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("ltb")
class LTB(BackboneModel):
    """Per-task backbone columns whose stage inputs branch from learned, Gumbel-sampled parents."""

    arch_name = "ltb"
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
        warmup: float = 0.01,
        tau_scale: float = 0.05,
    ) -> None:
        super().__init__(
            tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained, align_corners=align_corners
        )
        for key, value in (("warmup", warmup), ("tau_scale", tau_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"model.options.{key} must be a non-negative number (got {value!r})")
        if not tau_scale > 0:
            raise ConfigError("model.options.tau_scale must be positive")
        self.warmup, self.tau_scale = float(warmup), float(tau_scale)
        self.nets = nn.ModuleDict({t.name: self.new_backbone() for t in self.tasks})
        first = backbones_in(self.nets)[0]
        k = len(self.tasks)
        self.alpha = nn.Parameter(torch.zeros(first.num_stages - 1, k, k))
        self.heads = self.make_heads(first)
        self.epoch, self.epochs = 0, 0  # set by the trainer before every epoch (resume included)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Move the schedule to 0-based ``epoch`` of ``epochs``."""
        self.epoch, self.epochs = int(epoch), int(epochs)

    def in_warmup(self) -> bool:
        """Whether the current epoch lies in the warm-up (every column reads a soft mix of all)."""
        return self.epochs > 0 and self.epoch < self.warmup * self.epochs

    def temperature(self) -> float:
        """The Gumbel-softmax temperature at the current epoch."""
        return 1.0 if self.epochs == 0 else self.tau_scale * self.epochs / math.sqrt(self.epoch + 1)

    def branch_weights(self) -> Tensor:
        """``(stages - 1, K, K)`` parent weights for this pass (rows: children, columns: parents)."""
        k = self.alpha.shape[-1]
        if self.training:
            if self.in_warmup():
                return self.alpha.softmax(dim=-1)
            return F.gumbel_softmax(self.alpha, tau=self.temperature(), hard=True, dim=-1)
        return F.one_hot(self.alpha.argmax(dim=-1), k).to(self.alpha.dtype)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Every column through every stage with the sampled branching; each task's final features."""
        nets = backbones_in(self.nets)
        self.check_input(x, nets[0])
        starts = [net.begin(x) for net in nets]
        hs, ctxs = [h for h, _ in starts], [c for _, c in starts]
        weights = self.branch_weights()
        for i in range(nets[0].num_stages):
            if i > 0:
                self.record(f"branch/stage{i}", self.alpha[i - 1].softmax(dim=-1))
                stacked = torch.stack(hs, dim=1)  # (B, K, C, H, W)
                hs = list(torch.einsum("tp,bpchw->tbchw", weights[i - 1].to(stacked.dtype), stacked).unbind(0))
            hs = [net.stage(i, h, ctx) for net, h, ctx in zip(nets, hs, ctxs)]
        return hs

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        index = {t.name: i for i, t in enumerate(self.tasks)}
        return {name: self.heads[name](reps[index[name]]) for name in select_tasks(self.tasks, tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """All but the heads and each column's last stage (which only its own task reads)."""
        own = {id(p) for p in self.heads.parameters()}
        for net in backbones_in(self.nets):
            own |= {id(p) for p in net.stage_module(net.num_stages - 1).parameters()}
        return [p for p in self.parameters() if id(p) not in own]
