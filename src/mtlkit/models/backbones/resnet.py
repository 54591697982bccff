"""Dilated ResNets (output stride 8) whose state-dict keys and shapes equal torchvision's.

``resnet18_dilated``, ``resnet34_dilated`` (BasicBlock) and ``resnet50_dilated`` (Bottleneck),
as in the MTAN authors' MTAN-DeepLabv3 and LibMTL: layer3 and layer4 keep their resolution, their
strides replaced by dilation 2 and 4 (torchvision's ``replace_stride_with_dilation=[False, True,
True]``: a layer's first block keeps the previous dilation in its strided conv, every other 3x3
conv uses the layer's). torchvision refuses dilation in BasicBlock; here a BasicBlock's second
conv takes the layer's dilation, as the MTAN authors' ``ResnetDilated`` does. Weights start as
torchvision's do (Kaiming-normal, fan-out convs; unit BN scales), so ImageNet weights saved from
torchvision load unchanged (``fc.*`` is dropped: there is no classifier).

Why not torchvision itself: on the machines this project is built on, PyPI's torchvision does not
import beside the pinned torch 2.13.0 CPU wheel, and the matching pair is a 5.5 GB CUDA build.
torchvision stays optional, used only to fetch ImageNet weights (``model.pretrained: imagenet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.base import Backbone
from mtlkit.models.blocks import scale_channels
from mtlkit.models.heads import DeepLabHead

#: blocks per layer and block type of each depth
SPECS = {18: ((2, 2, 2, 2), "basic"), 34: ((3, 4, 6, 3), "basic"), 50: ((3, 4, 6, 3), "bottleneck")}
#: torchvision's IMAGENET1K_V1 files (what the MTAN authors and LibMTL start from)
WEIGHT_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv without bias whose padding keeps the size (before striding)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the (projected) input; ReLU after the sum."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        dilation: tuple[int, int] = (1, 1),
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided / dilated), 1x1 expand (x4), plus the (projected) input (ResNet v1.5)."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        dilation: tuple[int, int] = (1, 1),
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation[0])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


def make_layer(
    block: type[BasicBlock] | type[Bottleneck],
    cin: int,
    planes: int,
    blocks: int,
    stride: int,
    dilation: int,
    prev_dilation: int,
) -> nn.Sequential:
    """One ResNet layer; a dilated layer (``dilation > 1``) has stride 1 everywhere."""
    cout = planes * block.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    first_second = dilation if block is BasicBlock else 1
    layers = [block(cin, planes, stride, (prev_dilation, first_second), downsample)]
    layers += [block(cout, planes, 1, (dilation, dilation)) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class DilatedResNet(Backbone):
    """A torchvision-layout ResNet without classifier, output stride 8; stages layer1..layer4."""

    has_pretrained = True

    def __init__(self, depth: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        blocks, block_type = SPECS[depth]
        block = BasicBlock if block_type == "basic" else Bottleneck
        self.name = f"resnet{depth}_dilated"
        self.depth = depth
        self.width = width
        stem, *planes = scale_channels((64, 64, 128, 256, 512), width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = stem
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        prev = 1
        for i in range(4):
            layer = make_layer(block, cin, planes[i], blocks[i], strides[i], dilations[i], prev)
            self.add_module(f"layer{i + 1}", layer)
            cin, prev = planes[i] * block.expansion, dilations[i]
        self.channels = tuple(p * block.expansion for p in planes)
        self.strides = (4, 8, 8, 8)
        self.stage_names = ("layer1", "layer2", "layer3", "layer4")
        self.size_divisor = 8
        self.head_width = width
        self.reset_parameters()

    @property
    def layers(self) -> list[nn.Sequential]:
        """layer1..layer4 (not registered twice: the state dict keeps torchvision's keys)."""
        return [cast(nn.Sequential, getattr(self, f"layer{i}")) for i in range(1, 5)]

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan-out) convs, unit BN scales, zero shifts."""
        for m in self.modules():
            if getattr(getattr(m, "weight", None), "is_meta", False):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: Tensor) -> Tensor:
        """conv1-bn1-relu-maxpool: 1/4 of the input."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def begin(self, x: Tensor) -> tuple[Tensor, None]:
        return self.stem(x), None

    def stage(self, i: int, h: Tensor, ctx: None) -> Tensor:
        return self.layers[i](h)

    def stage_module(self, i: int) -> nn.Module:
        return self.layers[i]

    def make_head(self, out_channels: int, align_corners: bool = False) -> nn.Module:
        """torchvision's DeepLabV3 head (ASPP rates 12/24/36), upsampled by the output stride.

        ``align_corners``: False upsamples as torchvision, True as the MTAN authors and LibMTL.
        """
        return DeepLabHead(
            self.out_channels, out_channels, self.head_width, upsample=self.output_stride, align_corners=align_corners
        )

    def load_pretrained(self, source: str) -> None:
        """Load ImageNet weights: ``imagenet`` (torchvision's, downloaded) or a state-dict file path."""
        if self.width != 1.0:
            raise ConfigError(f"model.pretrained: pretrained weights need model.width 1 (got {self.width})")
        state = _imagenet_state(self.depth) if source == "imagenet" else _file_state(source)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        check_state(self.state_dict(), state, source)
        self.load_state_dict(state)


def _imagenet_state(depth: int) -> dict[str, Tensor]:
    """torchvision's IMAGENET1K_V1 weights for ResNet-``depth``; a ConfigError when unreachable."""
    hint = f"download {WEIGHT_URLS[depth]} elsewhere and set model.pretrained to that file's path"
    try:
        from torchvision.models import get_weight
    except Exception:  # noqa: BLE001 - any import failure means the same thing to the user
        raise ConfigError(f"model.pretrained: imagenet needs torchvision, which does not import here; {hint}") from None
    try:
        return get_weight(f"ResNet{depth}_Weights.IMAGENET1K_V1").get_state_dict(progress=False)
    except Exception as err:  # noqa: BLE001 - offline, proxy, corrupt cache...
        why = type(err).__name__
        raise ConfigError(f"model.pretrained: could not fetch ImageNet weights ({why}); {hint}") from None


def _file_state(path: str) -> dict[str, Tensor]:
    """A state dict read from ``path`` with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.pretrained: {path!r} is neither 'none', 'imagenet' nor an existing file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle/zip errors of every kind
        raise ConfigError(f"model.pretrained: {path}: not a loadable state dict ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained: {path}: expected a dict of tensors (a model state dict)")
    return state


def check_state(own: dict[str, Tensor], given: dict[str, Tensor], source: str) -> None:
    """Raise a one-line ConfigError unless ``given`` has exactly ``own``'s keys and shapes."""
    missing = sorted(set(own) - set(given))
    extra = sorted(set(given) - set(own))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ConfigError(
            f"model.pretrained: {source}: keys do not match the backbone "
            f"({len(missing)} missing, {len(extra)} unexpected; first {what})"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(given[k].shape)]
    if bad:
        raise ConfigError(
            f"model.pretrained: {source}: {bad[0]} has shape {tuple(given[bad[0]].shape)}, "
            f"the backbone needs {tuple(own[bad[0]].shape)}"
        )


def resnet_factory(depth: int) -> type[DilatedResNet]:
    """The registered class of ResNet-``depth``: a :class:`DilatedResNet` built from ``(width, in_channels)``."""

    class Dilated(DilatedResNet):
        def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
            super().__init__(depth, width, in_channels)

    Dilated.__name__ = Dilated.__qualname__ = f"ResNet{depth}Dilated"
    Dilated.__doc__ = f"ResNet-{depth}, dilated to output stride 8 (torchvision keys)."
    return Dilated
