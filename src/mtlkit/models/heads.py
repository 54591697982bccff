"""DeepLabV3 heads for the ResNet backbones, structured as torchvision's ``DeepLabHead``.

``DeepLabHead(in, out)`` = ASPP (a 1x1 conv, three 3x3 convs dilated 12/24/36 and an image-level
pooling branch, each conv-BN-ReLU with 256 channels; concatenated and projected by a 1x1
conv-BN-ReLU, then dropout 0.5), a 3x3 conv-BN-ReLU and a 1x1 conv to the task's channels, as in
Chen et al., *Rethinking Atrous Convolution* (2017) and torchvision. Its state-dict keys equal
torchvision's, so a head trained there loads here. The output is upsampled (bilinear) by the
backbone's output stride back to the input resolution. ``width`` scales the 256 channels.

``align_corners`` (``model.align_corners``) chooses how that last upsampling interpolates:

* ``False`` (the default): torchvision's DeepLabV3 convention (pixel centres aligned, as
  ``F.interpolate(..., align_corners=False)``).
* ``True``: the MTAN authors' MTAN-DeepLabv3, Auto-Lambda and LibMTL (their NYUv2 / CityScapes
  examples upsample the heads' logits to the image size with ``align_corners=True`` and compute
  the losses on the result). The two agree up to the upsampling and differ after it (the sampling
  grids are offset by up to half a feature-map pixel), so a run compared with theirs needs theirs.

Only this final upsampling depends on the option; the image-level ASPP branch broadcasts a 1x1
map, where both conventions give the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.models.blocks import scale_channels

#: ASPP dilation rates of torchvision's DeepLabHead (output stride 8)
ASPP_RATES = (12, 24, 36)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if kernel == 3 else 0
    return [nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average, 1x1 conv-BN-ReLU, broadcast back to the map's size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches, concatenated and projected."""

    def __init__(self, cin: int, rates: tuple[int, ...] = ASPP_RATES, cout: int = 256) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(cin, cout))]
        branches += [nn.Sequential(*_conv_bn_relu(cin, cout, 3, r)) for r in rates]
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * cout, cout), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, 3x3 conv-BN-ReLU, 1x1 conv to ``out_channels``; upsampled by ``upsample`` (raw output).

    ``align_corners`` is the bilinear upsampling's convention: False as torchvision, True as the
    MTAN authors and LibMTL (see the module docstring).
    """

    def __init__(
        self, in_channels: int, out_channels: int, width: float = 1.0, upsample: int = 1, align_corners: bool = False
    ) -> None:
        (c,) = scale_channels((256,), width)
        super().__init__(ASPP(in_channels, ASPP_RATES, c), *_conv_bn_relu(c, c, 3), nn.Conv2d(c, out_channels, 1))
        self.upsample = upsample
        self.align_corners = bool(align_corners)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.upsample == 1:
            return out
        size = (x.shape[-2] * self.upsample, x.shape[-1] * self.upsample)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=self.align_corners)
