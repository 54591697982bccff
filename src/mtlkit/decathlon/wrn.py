"""Wide Residual Networks for the Visual Decathlon: one network per domain, and the shared MTAN.

Backbone (MTAN section 4.2): WRN-28 with widening factor 4, pre-activation basic blocks, channels
``[16, 16k, 32k, 64k]`` (times ``width``), four blocks per stage, every stage striding by 2 (72x72
inputs end at 9x9), a final BN-ReLU, average pooling and one linear classifier per domain.

``model.options.variant`` says which conventions the networks follow:

* ``official`` (default): as the MTAN authors' ``visual_decathlon/model_wrn_mtan.py`` runs.
  Every convolution has a bias; PyTorch's default initialisation (their ``conv_init`` is never
  applied); the final shared BatchNorm has ``momentum=0.9`` (PyTorch convention: the running
  statistics are 90 % the last batch); the last map is pooled by ``avg_pool2d(x, 8)``, which at
  their 72x72 input (9x9 map) averages the top-left 8x8 only, so inputs must end at 8..15 pixels
  (57..120 pixels per side). With equal weights the outputs equal theirs.
* ``clean``: no conv biases (those before a BN are redundant, the others barely matter), He-normal
  convolutions and zero classifier biases, BN momentum 0.1 everywhere, global average pooling of
  the whole map. Choose it for inputs of any size (the CPU configs use 32x32), for statistics that
  do not hinge on the last batch's domain (with one domain per batch, ``momentum=0.9`` leaves the
  final BN fitted to whichever domain came last, see ``decathlon.evaluate.refresh_bn``), and for a
  translation-symmetric pooling.

* ``wrn``: an independent WRN per domain (the "scratch/finetune" baseline shape, #P = number of
  domains). Nothing is shared; ``encode`` passes the image through.
* ``wrn_mtan``: one shared WRN whose four feature levels (after the stem and after each stage) feed
  per-domain soft-attention modules (two 1x1 conv-BN layers, ReLU then sigmoid), as in MTAN: level
  ``j``'s mask is computed from the shared features concatenated with the domain's previous
  attended output, multiplies the shared features, and goes through a shared 3x3 conv-BN-ReLU
  block (max-pooled between levels). Only the domains asked for are computed. Under
  ``model.recording()`` the masks are stored as ``attention/<domain>/<level>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.base import MultiTaskModel
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task

#: the conventions a decathlon WRN can follow (``model.options.variant``)
VARIANTS = ("official", "clean")
#: the official code's ``avg_pool2d`` window over the last map
OFFICIAL_POOL = 8
#: the official code's momentum of the final shared BatchNorm (PyTorch convention)
OFFICIAL_FINAL_BN_MOMENTUM = 0.9

#: names of the four feature levels the attention modules sit on (keys of recorded masks)
LEVELS = ("stem", "stage1", "stage2", "stage3")


def wrn_channels(width: float, widen_factor: int) -> list[int]:
    """Channels of the stem and the three stages: ``[16, 16k, 32k, 64k]`` scaled by ``width``."""
    base = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    return [max(1, int(round(c * width))) for c in base]


def _blocks_per_stage(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"model.options.depth: WRN depth must be 6n+4 with n >= 1 (got {depth})")
    return (depth - 4) // 6


def _check_variant(variant: str) -> bool:
    """True for ``official``; a ConfigError for anything but the two variants."""
    if variant not in VARIANTS:
        raise ConfigError(f"model.options.variant: expected one of {', '.join(VARIANTS)} (got {variant!r})")
    return variant == "official"


def pool_features(x: Tensor, variant: str) -> Tensor:
    """(N, C) features of the last map: its mean (clean) or the official ``avg_pool2d(x, 8)``."""
    if variant == "clean":
        return x.mean(dim=(2, 3))
    h, w = x.shape[-2:]
    if not (OFFICIAL_POOL <= h < 2 * OFFICIAL_POOL and OFFICIAL_POOL <= w < 2 * OFFICIAL_POOL):
        raise ConfigError(
            f"model.options.variant: official pools the last map with avg_pool2d(x, {OFFICIAL_POOL}) as the MTAN "
            f"code does, which needs a map of 8 to 15 pixels (inputs of 57 to 120 pixels, 72 in their pipeline); "
            f"got {h}x{w}: set dataset.height/width accordingly or use variant: clean"
        )
    return F.avg_pool2d(x, OFFICIAL_POOL).flatten(1)


def _check_tasks(tasks: list[Task]) -> None:
    for t in tasks:
        if t.kind != "classification":
            raise ConfigError(f"WRN decathlon models classify images; task {t.name!r} is {t.kind}")


class WideBasic(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3, BN-ReLU-conv3x3 (strided), plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, bias: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=bias)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=bias) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WRNBackbone(nn.Module):
    """WRN-depth-k feature extractor returning the four levels [stem, stage1, stage2, stage3]."""

    def __init__(self, width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official") -> None:
        super().__init__()
        official = _check_variant(variant)
        n = _blocks_per_stage(depth)
        self.channels = wrn_channels(width, widen_factor)
        c = self.channels
        self.stem = nn.Conv2d(3, c[0], 3, padding=1, bias=official)
        self.stages = nn.ModuleList(
            [self._stage(c[i], c[i + 1], n, stride=2, bias=official) for i in range(3)]
        )
        self.bn = nn.BatchNorm2d(c[3], momentum=OFFICIAL_FINAL_BN_MOMENTUM if official else 0.1)
        if not official:
            _init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int, bias: bool) -> nn.Sequential:
        blocks = [WideBasic(cin, cout, stride, bias)] + [WideBasic(cout, cout, 1, bias) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        feats[-1] = F.relu(self.bn(feats[-1]))
        return feats


def _init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit BN, zero biases (the usual WRN initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class WRNClassifier(nn.Module):
    """One whole single-domain network: WRN backbone, average pool, linear classifier."""

    def __init__(
        self, num_classes: int, width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official"
    ) -> None:
        super().__init__()
        self.variant = variant
        self.backbone = WRNBackbone(width, depth, widen_factor, variant)
        self.head = nn.Linear(self.backbone.channels[3], num_classes)
        if variant == "clean":
            _init_weights(self.head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(pool_features(self.backbone(x)[-1], self.variant))


class _DecathlonModel(MultiTaskModel):
    """Shared helpers: task lookup and the parameter count of one single-domain network."""

    def __init__(self, tasks: list[Task], width: float, depth: int, widen_factor: int, variant: str) -> None:
        super().__init__(tasks)
        _check_tasks(tasks)
        _check_variant(variant)
        self.width, self.depth, self.widen_factor, self.variant = width, depth, widen_factor, variant
        self.task_names = [t.name for t in tasks]

    def _requested(self, tasks: list[str] | None) -> list[str]:
        if tasks is None:
            return list(self.task_names)
        unknown = [t for t in tasks if t not in self.task_names]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; the model has {self.task_names}")
        return list(tasks)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the linear classifiers (the decathlon's #P leaves them out)."""
        raise NotImplementedError

    @classmethod
    def single_task_parameters(
        cls, tasks: list[Task], width: float = 1.0, depth: int = 28, widen_factor: int = 4,
        variant: str = "official", **_: object,
    ) -> float:
        """Parameters of one single-domain WRN (same variant) with the mean classifier size of ``tasks``."""
        with torch.device("meta"):
            backbone = sum(p.numel() for p in WRNBackbone(width, depth, widen_factor, variant).parameters())
        c = wrn_channels(width, widen_factor)[3]
        mean_head = sum(c * t.channels + t.channels for t in tasks) / len(tasks)
        return backbone + mean_head


@ARCHITECTURES.register("wrn")
class WRN(_DecathlonModel):
    """One independent WRN-28-4 per domain (the decathlon's scratch/finetune baseline shape)."""

    supports_representation = False

    def __init__(
        self, tasks: list[Task], width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official"
    ) -> None:
        super().__init__(tasks, width, depth, widen_factor, variant)
        self.nets = nn.ModuleDict(
            {t.name: WRNClassifier(t.channels, width, depth, widen_factor, variant) for t in tasks}
        )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Nothing is shared: the 'representation' is the image itself."""
        return [x]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Logits of each requested domain from its own network."""
        return {name: self.nets[name](reps[0]) for name in self._requested(tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: every parameter belongs to one domain."""
        return []

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for net in self.nets.values() for p in net.head.parameters()]


def _attention(cin: int, cmid: int, cout: int, bias: bool) -> nn.Sequential:
    """MTAN attention module: 1x1 conv-BN-ReLU, 1x1 conv-BN-sigmoid (a soft mask in [0, 1])."""
    return nn.Sequential(
        nn.Conv2d(cin, cmid, 1, bias=bias),
        nn.BatchNorm2d(cmid),
        nn.ReLU(inplace=True),
        nn.Conv2d(cmid, cout, 1, bias=bias),
        nn.BatchNorm2d(cout),
        nn.Sigmoid(),
    )


def _conv_block(cin: int, cout: int, bias: bool) -> nn.Sequential:
    """Shared 3x3 conv-BN-ReLU after each attention mask (MTAN's f_j)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@ARCHITECTURES.register("wrn_mtan")
class WRNMTAN(_DecathlonModel):
    """Shared WRN-28-4 with per-domain attention at the stem and every residual stage (MTAN 4.2)."""

    def __init__(
        self, tasks: list[Task], width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official"
    ) -> None:
        super().__init__(tasks, width, depth, widen_factor, variant)
        bias = variant == "official"
        self.backbone = WRNBackbone(width, depth, widen_factor, variant)
        c = self.backbone.channels
        self.blocks = nn.ModuleList([_conv_block(c[j], c[min(j + 1, 3)], bias) for j in range(4)])
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    [_attention(c[0], c[0], c[0], bias)]
                    + [_attention(2 * c[j], c[j], c[j], bias) for j in range(1, 4)]
                )
                for t in tasks
            }
        )
        self.heads = nn.ModuleDict({t.name: nn.Linear(c[3], t.channels) for t in tasks})
        if variant == "clean":
            _init_weights(self.blocks)
            _init_weights(self.attention)
            _init_weights(self.heads)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The shared WRN's four feature levels (stem, stage 1, 2, 3)."""
        return self.backbone(x)

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested domain's attention branch over the shared levels, then its classifier."""
        out = {}
        for name in self._requested(tasks):
            prev: Tensor | None = None
            for j, feat in enumerate(reps):
                inp = feat if prev is None else torch.cat([feat, prev], dim=1)
                mask = self.attention[name][j](inp)
                self.record(f"attention/{name}/{LEVELS[j]}", mask)
                prev = self.blocks[j](mask * feat)
                if j < len(reps) - 1:  # ceil mode: equal to the official floor mode at even sizes (where it runs)
                    prev = F.max_pool2d(prev, 2, ceil_mode=True)
            out[name] = self.heads[name](pool_features(prev, self.variant))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The WRN backbone and the shared conv blocks between attention levels."""
        return [*self.backbone.parameters(), *self.blocks.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())
