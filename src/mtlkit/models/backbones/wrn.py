"""The Visual Decathlon's Wide ResNet (WRN-28-4 by default) as a staged backbone, ``wrn28``.

MTAN section 4.2: pre-activation basic blocks, channels ``[16, 16k, 32k, 64k]`` (times ``width``),
``(depth - 4) / 6`` blocks per residual stage, every residual stage striding by 2 (72x72 inputs end
at 9x9), then a final BN-ReLU. Four stages for the staged contract: the stem conv (stride 1) and
the three residual stages (the last one includes the final BN-ReLU). Heads classify the image
(pool the last map, one linear layer), so tasks on ``wrn28`` are classification tasks.

``variant`` gives the conventions: ``official`` (the MTAN authors' ``model_wrn_mtan.py``: conv
biases, PyTorch's default init, final BN momentum 0.9, ``avg_pool2d(x, 8)`` over the last map,
so inputs of 57..120 pixels) or ``clean`` (no conv biases, He-normal convs, zero classifier
biases, BN momentum 0.1, global average pooling: any input size); see :mod:`mtlkit.decathlon.wrn`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.base import Backbone, refuse_align_corners

#: the conventions a decathlon WRN can follow (``model.options.variant``)
VARIANTS = ("official", "clean")
#: the official code's ``avg_pool2d`` window over the last map
OFFICIAL_POOL = 8
#: the official code's momentum of the final shared BatchNorm (PyTorch convention)
OFFICIAL_FINAL_BN_MOMENTUM = 0.9


def wrn_channels(width: float, widen_factor: int) -> list[int]:
    """Channels of the stem and the three stages: ``[16, 16k, 32k, 64k]`` scaled by ``width``."""
    base = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    return [max(1, int(round(c * width))) for c in base]


def blocks_per_stage(depth: int) -> int:
    """``(depth - 4) / 6``; a ConfigError unless ``depth`` is 6n+4 with n >= 1."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"model.options.depth: WRN depth must be 6n+4 with n >= 1 (got {depth})")
    return (depth - 4) // 6


def check_variant(variant: str) -> bool:
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


def init_clean(module: nn.Module) -> None:
    """He-normal convolutions, unit BN, zero biases (the usual WRN initialisation; ``clean`` variant)."""
    for m in module.modules():
        if getattr(getattr(m, "weight", None), "is_meta", False):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


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


class PooledLinear(nn.Linear):
    """A classifier head: the variant's pooling of the last map, then one linear layer (logits)."""

    def __init__(self, cin: int, num_classes: int, variant: str) -> None:
        super().__init__(cin, num_classes)
        self.variant = variant
        if variant == "clean":
            init_clean(self)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(pool_features(x, self.variant))


class WideResNet(Backbone):
    """WRN-``depth``-``widen_factor`` at ``width``; stages stem, stage1..stage3 (strides 1, 2, 4, 8)."""

    name = "wrn28"
    dense_heads = False

    def __init__(
        self,
        width: float = 1.0,
        in_channels: int = 3,
        depth: int = 28,
        widen_factor: int = 4,
        variant: str = "official",
    ) -> None:
        super().__init__()
        official = check_variant(variant)
        n = blocks_per_stage(depth)
        self.variant = variant
        self.official = official
        c = wrn_channels(width, widen_factor)
        self.channels = tuple(c)
        self.strides = (1, 2, 4, 8)
        self.stage_names = ("stem", "stage1", "stage2", "stage3")
        self.stem = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=official)
        self.stages = nn.ModuleList([self._stage(c[i], c[i + 1], n, official) for i in range(3)])
        self.bn = nn.BatchNorm2d(c[3], momentum=OFFICIAL_FINAL_BN_MOMENTUM if official else 0.1)
        if not official:
            init_clean(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, bias: bool) -> nn.Sequential:
        blocks = [WideBasic(cin, cout, 2, bias)] + [WideBasic(cout, cout, 1, bias) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def begin(self, x: Tensor) -> tuple[Tensor, None]:
        return x, None

    def stage(self, i: int, h: Tensor, ctx: None) -> Tensor:
        """The stem conv (i = 0) or residual stage ``i``; the last one ends with the final BN-ReLU."""
        if i == 0:
            return self.stem(h)
        h = self.stages[i - 1](h)
        return F.relu(self.bn(h)) if i == self.num_stages - 1 else h

    def stage_module(self, i: int) -> nn.Module:
        if i == 0:
            return self.stem
        if i == self.num_stages - 1:
            return nn.ModuleList([self.stages[i - 1], self.bn])
        return self.stages[i - 1]

    def levels(self, x: Tensor) -> list[Tensor]:
        """Every stage's output: the four feature levels MTAN's attention sits on."""
        h, ctx = self.begin(x)
        out = []
        for i in range(self.num_stages):
            h = self.stage(i, h, ctx)
            out.append(h)
        return out

    def make_head(self, out_channels: int, align_corners: bool = False) -> nn.Module:
        """An image classifier with ``out_channels`` classes (pooled per the variant, then linear)."""
        refuse_align_corners(self.name, align_corners)
        return PooledLinear(self.out_channels, out_channels, self.variant)
