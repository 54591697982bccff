"""MTAN over a dilated ResNet: the MTAN authors' MTAN-DeepLabv3 (``model_resnet_mtan``), any depth.

Liu, Johns & Davison, *End-to-End Multi-Task Learning with Attention* (CVPR 2019); the ResNet
design is the authors' later release. Each ResNet stage ``j`` (layer1..layer4) is split into its
blocks but the last (output ``u_j``) and its last block (output ``p_j``), both shared. Per task:

    a_j = sigmoid(BN(W2 ReLU(BN(W1 [u_j ; â_{j-1}]))))     (only ``u_0`` at j = 0)
    â_j = down_j(f_j(a_j * p_j))                            (j < 3);   â_3 = a_3 * p_3

with W1, W2 1x1 convs (the intermediate width a quarter of ``p_j``'s channels, "a similar
bottleneck design", as the official code), f_j a Bottleneck block shared by all tasks mapping
``c_j`` to ``c_{j+1}`` channels (planes ``c_{j+1} / 4``, projected shortcut), and down_j a max-pool
by the stride ratio of stages j and j+1 (2 after layer1, 1 after the dilated layers). Each task's
DeepLabV3 head reads ``â_3``, upsampled to the input.

Choices: the 1x1 convs before BatchNorm have no bias (the official code has them; they are
redundant under BN), so each gate has ``c/4 + c`` fewer parameters than the official one. BasicBlock
ResNets (18/34) use the same Bottleneck f blocks. ``encode`` returns ``u_0, p_0, ..., u_3, p_3``;
``shared_parameters()`` is the backbone; the f blocks sit after the representation and train
with the sum of the task gradients. Masks are recorded as ``attention/<task>/enc<j>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import DilatedResNet
from mtlkit.models.backbones.resnet import Bottleneck
from mtlkit.models.blocks import select_tasks
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.tasks import Task


class BottleneckGate(nn.Sequential):
    """Attention mask: 1x1 conv-BN-ReLU to ``mid`` channels, 1x1 conv-BN, sigmoid; values in (0, 1)."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Sigmoid(),
        )


def shared_block(cin: int, cout: int) -> Bottleneck:
    """The shared f block: a Bottleneck ``cin -> cout`` (planes ``cout / 4``) with a projected shortcut."""
    planes = max(1, cout // 4)
    down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
    return Bottleneck(cin, planes, downsample=down)


class ResNetMTAN(BackboneModel):
    """Shared dilated ResNet + per-task attention on the last block of each of its four stages."""

    records = ("attention",)

    arch_name = "mtan"

    def __init__(self, tasks: list[Task], width: float = 1.0, *, backbone: str = "resnet50_dilated",
                 in_channels: int = 3, pretrained: str = "none") -> None:
        super().__init__(tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained)
        self.backbone = self.new_backbone()
        if not isinstance(self.backbone, DilatedResNet):
            raise ConfigError(f"model.arch 'mtan' over backbone {backbone!r}: only SegNet and ResNets are supported")
        c = self.backbone.channels
        n = len(c)
        self.f = nn.ModuleList([shared_block(c[j], c[j + 1]) for j in range(n - 1)])
        f_out = [c[0]] + [4 * max(1, c[j] // 4) for j in range(1, n)]
        self.att = nn.ModuleDict({
            t.name: nn.ModuleList(
                [BottleneckGate(c[0] if j == 0 else c[j] + f_out[j], max(1, c[j] // 4), c[j]) for j in range(n)])
            for t in self.tasks
        })
        self.pool_sizes = [self.backbone.strides[j + 1] // self.backbone.strides[j] for j in range(n - 1)]
        self.heads = self.make_heads(self.backbone)

    def encode(self, x: Tensor) -> list[Tensor]:
        """``u_j`` (stage j without its last block) and ``p_j`` (stage j's output) for j = 0..3."""
        self.check_input(x, self.backbone)
        h = self.backbone.stem(x)
        reps = []
        for layer in self.backbone.layers:
            u = layer[:-1](h)
            h = layer[-1](u)
            reps += [u, h]
        return reps

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's attention path over the shared tensors, then its head."""
        n = len(reps) // 2
        out = {}
        for name in select_tasks(self.tasks, tasks):
            a = None
            for j in range(n):
                u, p = reps[2 * j], reps[2 * j + 1]
                mask = self.att[name][j](u if a is None else torch.cat([u, a], dim=1))
                self.record(f"attention/{name}/enc{j}", mask)
                a = mask * p
                if j < n - 1:
                    a = self.f[j](a)
                    if self.pool_sizes[j] > 1:
                        a = F.max_pool2d(a, self.pool_sizes[j])
            out[name] = self.heads[name](a)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())
