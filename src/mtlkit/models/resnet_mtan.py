"""MTAN over a staged backbone: the authors' MTAN-DeepLabv3 on dilated ResNets, their WRN-MTAN on ``wrn28``.

Liu, Johns & Davison, *End-to-End Multi-Task Learning with Attention* (CVPR 2019). Each stage
``j`` gives two shared tensors, ``u_j`` (what the mask reads) and ``p_j`` (what it weighs). Per task:

    a_j = sigmoid(BN(W2 ReLU(BN(W1 [u_j ; â_{j-1}]))))     (only ``u_0`` at j = 0)
    â_j = down_j(f_j(a_j * p_j))

with W1, W2 1x1 convs (:class:`AttentionGate`), f_j a block shared by all tasks and down_j a
max-pool by the stride ratio of stages j and j+1 (none after the last stage). Each task's head
reads the last ``â``. What the backbone sets:

* Dilated ResNets (the authors' later ``model_resnet_mtan``): ``u_j`` is stage j without its last
  block, ``p_j`` its output; the gate's middle width is a quarter of ``p_j``'s channels ("a
  similar bottleneck design"); f_j (j < 3) is a Bottleneck ``c_j -> c_{j+1}`` (planes ``c_{j+1}/4``,
  projected shortcut), the last stage has none; DeepLabV3 heads, whose final x8 upsampling is
  ``model.align_corners`` (the authors' code upsamples with ``align_corners=True``; the default,
  False, is torchvision's). The 1x1 convs before BatchNorm have no bias (the official code has
  them; redundant under BN): ``c/4 + c`` fewer parameters per gate. BasicBlock ResNets (18/34),
  which the authors did not write, use the same Bottleneck f blocks and ``c/4`` middle widths
  (LibMTL's MTAN uses BasicBlock f blocks and middle width ``c`` on them).
* ``wrn28`` (MTAN section 4.2, the authors' ``visual_decathlon/model_wrn_mtan.py``): ``u_j = p_j``
  is stage j's output (stem, stage1..3, the last after the final BN-ReLU); the gate's middle width
  is ``c_j``; f_j is a 3x3 conv-BN-ReLU ``c_j -> c_{min(j+1, 3)}``, applied at every level
  including the last; convs carry biases in the ``official`` variant, and in ``clean`` f and the
  gates are re-initialised He-normal; classifier heads. Pools use ceil mode (equal to the official
  floor mode at the even sizes where it runs).

``encode`` returns ``u_0, p_0, ..., u_3, p_3`` (ResNet) or the four levels (``wrn28``).
``shared_parameters()`` is the backbone, plus the f blocks on ``wrn28`` (as the decathlon's WRN-MTAN
has always counted them; they run after ``encode``'s tensors, so ``wrn28`` refuses representation
mode). Masks are recorded as ``attention/<task>/<level>`` (``enc<j>`` on
ResNets; ``stem``, ``stage1``..``stage3`` on ``wrn28``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import DilatedResNet, WideResNet
from mtlkit.models.backbones.resnet import Bottleneck
from mtlkit.models.backbones.wrn import init_clean
from mtlkit.models.blocks import select_tasks
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.tasks import Task

#: recorded names of the ``wrn28`` levels
WRN_LEVELS = ("stem", "stage1", "stage2", "stage3")


class AttentionGate(nn.Sequential):
    """Attention mask: 1x1 conv-BN-ReLU to ``mid`` channels, 1x1 conv-BN, sigmoid; values in (0, 1)."""

    def __init__(self, cin: int, mid: int, cout: int, bias: bool = False) -> None:
        super().__init__(
            nn.Conv2d(cin, mid, 1, bias=bias), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=bias), nn.BatchNorm2d(cout), nn.Sigmoid(),
        )


def shared_block(cin: int, cout: int) -> Bottleneck:
    """The ResNets' shared f block: a Bottleneck ``cin -> cout`` (planes ``cout / 4``) with a projected shortcut."""
    planes = max(1, cout // 4)
    down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
    return Bottleneck(cin, planes, downsample=down)


def conv_block(cin: int, cout: int, bias: bool) -> nn.Sequential:
    """``wrn28``'s shared f block: 3x3 conv-BN-ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def resnet_parts(bb: DilatedResNet) -> tuple[list[nn.Module], list[tuple[int, int, int]], bool]:
    """The ResNet design's f blocks, gate sizes ``(in, mid, out)`` and conv bias."""
    c, n = bb.channels, bb.num_stages
    f_out = [c[0]] + [4 * max(1, c[j] // 4) for j in range(1, n)]
    gates = [(c[0] if j == 0 else c[j] + f_out[j], max(1, c[j] // 4), c[j]) for j in range(n)]
    return [shared_block(c[j], c[j + 1]) for j in range(n - 1)], gates, False


def wrn_parts(bb: WideResNet) -> tuple[list[nn.Module], list[tuple[int, int, int]], bool]:
    """The decathlon WRN design's f blocks, gate sizes ``(in, mid, out)`` and conv bias."""
    c, n = bb.channels, bb.num_stages
    gates = [(c[0], c[0], c[0])] + [(2 * c[j], c[j], c[j]) for j in range(1, n)]
    return [conv_block(c[j], c[min(j + 1, n - 1)], bb.official) for j in range(n)], gates, bb.official


class MTANOverBackbone(BackboneModel):
    """Shared backbone + per-task attention on each of its stages, shared f blocks between them."""

    records = ("attention",)

    arch_name = "mtan"

    def __init__(self, tasks: list[Task], width: float = 1.0, *, backbone: str = "resnet50_dilated",
                 in_channels: int = 3, pretrained: str = "none", align_corners: bool = False) -> None:
        super().__init__(tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained,
                         align_corners=align_corners)
        self.backbone = self.new_backbone()
        bb = self.backbone
        if isinstance(bb, DilatedResNet):
            blocks, gates, bias = resnet_parts(bb)
        elif isinstance(bb, WideResNet):
            blocks, gates, bias = wrn_parts(bb)
        else:
            raise ConfigError(f"model.arch 'mtan' over backbone {backbone!r}: only SegNet, ResNets and wrn28 "
                              f"are supported")
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleDict(
            {t.name: nn.ModuleList([AttentionGate(*g, bias=bias) for g in gates]) for t in self.tasks})
        self.pool_sizes = [bb.strides[j + 1] // bb.strides[j] for j in range(bb.num_stages - 1)]
        self.heads = self.make_heads(bb)
        self.wrn = isinstance(bb, WideResNet)
        self.level_names = WRN_LEVELS if self.wrn else tuple(f"enc{j}" for j in range(bb.num_stages))
        if self.wrn and not bb.official:
            init_clean(self.blocks)
            init_clean(self.attention)

    def encode(self, x: Tensor) -> list[Tensor]:
        """``u_j`` (stage j without its last block) and ``p_j`` (stage j's output); on ``wrn28`` the levels."""
        self.check_input(x, self.backbone)
        if self.wrn:
            return self.backbone.levels(x)
        h = self.backbone.stem(x)
        reps = []
        for layer in self.backbone.layers:
            u = layer[:-1](h)
            h = layer[-1](u)
            reps += [u, h]
        return reps

    @property
    def supports_representation(self) -> bool:
        """False on ``wrn28``: its f blocks are shared parameters the attention path applies after
        ``encode``'s tensors, so no set of those tensors cuts the graph (representation mode would
        drop the blocks' gradient)."""
        return not self.wrn

    def taps(self, reps: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``(u_j, p_j)`` for each stage from ``encode``'s output."""
        if self.wrn:
            return [(r, r) for r in reps]
        return [(reps[2 * j], reps[2 * j + 1]) for j in range(len(reps) // 2)]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's attention path over the shared tensors, then its head."""
        taps = self.taps(reps)
        n = len(taps)
        out = {}
        for name in select_tasks(self.tasks, tasks):
            a = None
            for j, (u, p) in enumerate(taps):
                mask = self.attention[name][j](u if a is None else torch.cat([u, a], dim=1))
                self.record(f"attention/{name}/{self.level_names[j]}", mask)
                a = mask * p
                if j < len(self.blocks):
                    a = self.blocks[j](a)
                if j < n - 1 and self.pool_sizes[j] > 1:
                    a = F.max_pool2d(a, self.pool_sizes[j], ceil_mode=True)
            out[name] = self.heads[name](a)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The backbone (plus the f blocks on ``wrn28``)."""
        if self.wrn:
            return [*self.backbone.parameters(), *self.blocks.parameters()]
        return list(self.backbone.parameters())


#: the name this class had when it only knew ResNets
ResNetMTAN = MTANOverBackbone
