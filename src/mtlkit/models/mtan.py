"""Multi-Task Attention Network (Liu, Johns & Davison, *End-to-End Multi-Task Learning with
Attention*, CVPR 2019), written once over the staged backbones.

The backbone gives, at every attended level s, two shared tensors: ``u_s`` (what the mask reads)
and ``p_s`` (what it weighs). Per task, with ``â`` the task's attended features:

    a_s = sigmoid(BN(W2 ReLU(BN(W1 [u_s ; c_s(â_{s-1})]))))     (only ``u_0`` at s = 0)
    â_s = a_s * p_s

with W1, W2 1x1 convs (:class:`~mtlkit.models.blocks.AttentionGate`, task-specific) and ``c_s``
the carry from level s-1 to level s (blocks shared by all tasks, resampled to level s); the task's
head reads ``finish(â_last)``. What the backbone sets (its *design*):

* ``segnet`` (``Backbone.paper_segnet``): the paper's exact layout, 10 levels, the five encoder
  stages then the five decoder stages. Encoder level j: ``u_j`` is the stage's first conv layer
  output, ``p_j`` its output; the carry into level j+1 is ``maxpool(f_j(.))`` with f_j a 3x3
  conv-BN-ReLU ``c_j -> c_{j+1}`` (``c_4 -> c_4``). Decoder level j (4 down to 0): ``u`` is the
  stage's unpooled input ``v_j``, ``p`` its output ``q_j``; the carry is ``f'_j(upsample(.))``
  (bilinear x2, ``align_corners=True``) with f'_j a 3x3 conv-BN-ReLU to the stage's output
  channels. ``finish`` is the identity. Widths follow the official code, which reproduces the
  paper's #P (1.77 on NYUv2); the gates' middle width is their output's. Parameters keep the
  paper model's names (``trunk``, ``enc_f``, ``dec_f``, ``enc_att``, ``dec_att``, ``heads``, as
  ``tests/models/test_segnet_checksums.py`` pins) and ``shared_parameters()`` is the trunk.
* Dilated ResNets (the authors' later ``model_resnet_mtan``): ``u_j`` is stage j without its last
  block, ``p_j`` its output; the gate's middle width is a quarter of ``p_j``'s channels ("a
  similar bottleneck design"); the carry is a Bottleneck ``c_j -> c_{j+1}`` (planes ``c_{j+1}/4``,
  projected shortcut) then a max-pool by the stride ratio (none between the dilated layers);
  ``finish`` is the identity; DeepLabV3 heads, whose final x8 upsampling is ``model.align_corners``.
  The 1x1 convs before BatchNorm have no bias (the official code has them; redundant under BN).
  BasicBlock ResNets (18/34), which the authors did not write, use the same Bottleneck blocks and
  ``c/4`` middle widths (LibMTL's MTAN uses BasicBlock blocks and middle width ``c`` on them).
* ``wrn28`` (MTAN section 4.2, the authors' ``visual_decathlon/model_wrn_mtan.py``): ``u_j = p_j``
  is stage j's output (stem, stage1..3, the last after the final BN-ReLU); the gate's middle width
  is ``c_j``; the blocks are 3x3 conv-BN-ReLU ``c_j -> c_{min(j+1, 3)}``, max-pooled by 2 between
  levels (ceil mode, equal to the official floor mode at the even sizes where it runs), and
  ``finish`` is the last level's block; convs carry biases in the ``official`` variant, and in
  ``clean`` the blocks and the gates are re-initialised He-normal; classifier heads.
  ``shared_parameters()`` is the backbone plus the blocks (they run after ``encode``'s tensors,
  so ``wrn28`` refuses representation mode, ``supports_representation`` is False there).

``encode`` returns ``u_0, p_0, u_1, p_1, ...`` (``wrn28``: its four levels once each). Masks are
recorded as ``attention/<task>/<level>``: ``enc<j>``/``dec<j>`` on SegNet (level j = resolution
1/2^j), ``enc<j>`` on ResNets, ``stem``, ``stage1``..``stage3`` on ``wrn28``.
Resolved ambiguities (SegNet): the paper's "intermediate features" ``u`` are the first conv
layer's output in the encoder and the unpooled input in the decoder (as the official code).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import DilatedResNet, WideResNet
from mtlkit.models.backbones.resnet import Bottleneck
from mtlkit.models.backbones.wrn import init_clean
from mtlkit.models.blocks import (
    NUM_LEVELS,
    SEGNET_CHANNELS,
    SEGNET_DEPTHS,
    AttentionGate,
    ConvBNReLU,
    SegNetTrunk,
    check_input,
    init_weights,
    make_heads,
    scale_channels,
    select_tasks,
)
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task

#: recorded names of the ``wrn28`` levels
WRN_LEVELS = ("stem", "stage1", "stage2", "stage3")
#: recorded names of the SegNet levels, in the order they are attended
SEGNET_LEVELS = tuple(f"enc{j}" for j in range(NUM_LEVELS)) + tuple(f"dec{j}" for j in range(NUM_LEVELS - 1, -1, -1))


def shared_block(cin: int, cout: int) -> Bottleneck:
    """The ResNets' shared block: a Bottleneck ``cin -> cout`` (planes ``cout / 4``) with a projected shortcut."""
    planes = max(1, cout // 4)
    down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
    return Bottleneck(cin, planes, downsample=down)


def conv_block(cin: int, cout: int, bias: bool) -> nn.Sequential:
    """``wrn28``'s shared block: 3x3 conv-BN-ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def resnet_parts(bb: DilatedResNet) -> tuple[list[nn.Module], list[tuple[int, int, int]], bool]:
    """The ResNet design's blocks, gate sizes ``(in, mid, out)`` and conv bias."""
    c, n = bb.channels, bb.num_stages
    f_out = [c[0]] + [4 * max(1, c[j] // 4) for j in range(1, n)]
    gates = [(c[0] if j == 0 else c[j] + f_out[j], max(1, c[j] // 4), c[j]) for j in range(n)]
    return [shared_block(c[j], c[j + 1]) for j in range(n - 1)], gates, False


def wrn_parts(bb: WideResNet) -> tuple[list[nn.Module], list[tuple[int, int, int]], bool]:
    """The decathlon WRN design's blocks, gate sizes ``(in, mid, out)`` and conv bias."""
    c, n = bb.channels, bb.num_stages
    gates = [(c[0], c[0], c[0])] + [(2 * c[j], c[j], c[j]) for j in range(1, n)]
    return [conv_block(c[j], c[min(j + 1, n - 1)], bb.official) for j in range(n)], gates, bb.official


@ARCHITECTURES.register("mtan")
class MTAN(BackboneModel):
    """Shared backbone + per-task attention at every level, shared blocks between levels (the paper's SegNet
    layout on ``segnet``; see the module docstring for each backbone's design)."""

    records = ("attention",)
    single_task_reference = "single"
    label = "MTAN"

    arch_name = "mtan"

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
        self.wrn = False
        if self.paper:
            self._build_paper(width, in_channels)
        else:
            self._build_staged()

    # ------------------------------------------------------------------ building the designs

    def _build_paper(self, width: float, in_channels: int) -> None:
        """The MTAN paper's SegNet layout (its module names and creation order)."""
        c = scale_channels(SEGNET_CHANNELS, width)
        self.trunk = SegNetTrunk(in_channels, c, SEGNET_DEPTHS)
        t, last = self.trunk, NUM_LEVELS - 1
        enc_f_out = [c[j + 1] if j < last else c[last] for j in range(NUM_LEVELS)]
        # channels of the attended features entering decoder level j (before f'_j)
        prev_dec = {j: enc_f_out[last] if j == last else t.dec_out_channels[j + 1] for j in range(NUM_LEVELS)}
        self.enc_f = nn.ModuleList([ConvBNReLU(c[j], enc_f_out[j]) for j in range(NUM_LEVELS)])
        self.dec_f = nn.ModuleList([ConvBNReLU(prev_dec[j], t.dec_out_channels[j]) for j in range(NUM_LEVELS)])
        self.enc_att = nn.ModuleDict(
            {
                task.name: nn.ModuleList(
                    [AttentionGate(c[0] if j == 0 else c[j] + enc_f_out[j - 1], c[j]) for j in range(NUM_LEVELS)]
                )
                for task in self.tasks
            }
        )
        self.dec_att = nn.ModuleDict(
            {
                task.name: nn.ModuleList(
                    [
                        AttentionGate(t.dec_in_channels[j] + t.dec_out_channels[j], t.dec_out_channels[j])
                        for j in range(NUM_LEVELS)
                    ]
                )
                for task in self.tasks
            }
        )
        self.heads = make_heads(self.tasks, t.out_channels)
        self.level_names = SEGNET_LEVELS
        init_weights(self)

    def _build_staged(self) -> None:
        """The ResNet or WRN design over a fresh backbone."""
        self.backbone = self.new_backbone()
        bb = self.backbone
        if isinstance(bb, DilatedResNet):
            blocks, gates, bias = resnet_parts(bb)
        elif isinstance(bb, WideResNet):
            blocks, gates, bias = wrn_parts(bb)
        else:
            raise ConfigError(
                f"model.arch 'mtan' over backbone {self.backbone_name!r}: only SegNet, ResNets and wrn28 are supported"
            )
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    [AttentionGate(cin, cout, mid, bias=bias, grouped=False) for cin, mid, cout in gates]
                )
                for t in self.tasks
            }
        )
        self.pool_sizes = [bb.strides[j + 1] // bb.strides[j] for j in range(bb.num_stages - 1)]
        self.heads = self.make_heads(bb)
        self.wrn = isinstance(bb, WideResNet)
        self.level_names = WRN_LEVELS if self.wrn else tuple(f"enc{j}" for j in range(bb.num_stages))
        if isinstance(bb, WideResNet) and not bb.official:
            init_clean(self.blocks)
            init_clean(self.attention)

    # ------------------------------------------------------------------ the design's pieces

    def gates(self, name: str) -> list[nn.Module]:
        """Task ``name``'s gate of every level, in the order the levels are attended."""
        if self.paper:
            enc, dec = cast(nn.ModuleList, self.enc_att[name]), cast(nn.ModuleList, self.dec_att[name])
            return [*enc, *(dec[j] for j in range(NUM_LEVELS - 1, -1, -1))]
        return list(cast(nn.ModuleList, self.attention[name]))

    def carry(self, s: int, a: Tensor, like: Tensor) -> Tensor:
        """The attended features of level ``s - 1`` brought to level ``s`` (``like``: its ``p``) by shared blocks."""
        if self.paper:
            if s < NUM_LEVELS:
                return F.max_pool2d(self.enc_f[s - 1](a), kernel_size=2, stride=2)
            if s == NUM_LEVELS:
                a = F.max_pool2d(self.enc_f[s - 1](a), kernel_size=2, stride=2)
            up = F.interpolate(a, size=like.shape[-2:], mode="bilinear", align_corners=True)
            return self.dec_f[2 * NUM_LEVELS - 1 - s](up)
        a = self.blocks[s - 1](a)
        size = self.pool_sizes[s - 1]
        return F.max_pool2d(a, size, ceil_mode=True) if size > 1 else a

    def finish(self, a: Tensor) -> Tensor:
        """The last level's attended features as the heads read them (the last block where there is one per level)."""
        if not self.paper and len(self.blocks) == len(self.level_names):
            return self.blocks[-1](a)
        return a

    # ------------------------------------------------------------------ the contract

    def encode(self, x: Tensor) -> list[Tensor]:
        """The shared tensors the gates read: ``u_s, p_s`` per level (on ``wrn28`` the four levels)."""
        if self.paper:
            check_input(x)
            f = self.trunk.run(x)
            reps = []
            for j in range(NUM_LEVELS):
                reps += [f.enc_first[j], f.enc_out[j]]
            for j in range(NUM_LEVELS - 1, -1, -1):
                reps += [f.dec_in[j], f.dec_out[j]]
            return reps
        self.check_input(x, self.backbone)
        if isinstance(self.backbone, WideResNet):
            return self.backbone.levels(x)
        assert isinstance(self.backbone, DilatedResNet)
        h = self.backbone.stem(x)
        reps = []
        for layer in self.backbone.layers:
            u = layer[:-1](h)
            h = layer[-1](u)
            reps += [u, h]
        return reps

    @property
    def supports_representation(self) -> bool:  # type: ignore[override]  # an instance property here
        """False on ``wrn28``: its blocks are shared parameters the attention path applies after
        ``encode``'s tensors, so no set of those tensors cuts the graph (representation mode would
        drop the blocks' gradient)."""
        return not self.wrn

    def taps(self, reps: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``(u_s, p_s)`` for each level from ``encode``'s output."""
        if self.wrn:
            return [(r, r) for r in reps]
        return [(reps[2 * j], reps[2 * j + 1]) for j in range(len(reps) // 2)]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's attention path over the shared tensors, then its head."""
        taps = self.taps(reps)
        out = {}
        for name in select_tasks(self.tasks, tasks):
            a: Tensor | None = None
            for s, (gate, (u, p)) in enumerate(zip(self.gates(name), taps)):
                mask = gate(u if a is None else torch.cat([u, self.carry(s, a, p)], dim=1))
                self.record(f"attention/{name}/{self.level_names[s]}", mask)
                a = mask * p
            assert a is not None
            out[name] = self.heads[name](self.finish(a))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk / backbone (plus the blocks on ``wrn28``)."""
        if self.paper:
            return list(self.trunk.parameters())
        if self.wrn:
            return [*self.backbone.parameters(), *self.blocks.parameters()]
        return list(self.backbone.parameters())
