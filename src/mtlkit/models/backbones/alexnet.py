"""AlexNet as a fully convolutional, staged backbone: the network of the cross-stitch paper.

Misra, Shrivastava, Gupta and Hebert, *Cross-stitch Networks for Multi-task Learning* (CVPR 2016,
arXiv 1604.03539) build every experiment from two AlexNets, one per task, joined by cross-stitch
units after pool1, pool2, pool5, fc6 and fc7; their "Split convN / fcN" baselines share AlexNet up
to layer N and branch after it. For semantic segmentation and surface normals on NYUv2 each
AlexNet is run fully convolutionally (fc6 and fc7 as convolutions, as in Long et al.'s FCN) and a
per-task layer on fc7 predicts a coarse map that is upsampled to the image.

Seven stages, named as the paper's split points: ``conv1`` (conv-ReLU-pool1), ``conv2``
(conv-ReLU-pool2), ``conv3``, ``conv4``, ``conv5`` (conv-ReLU-pool5), ``fc6`` and ``fc7`` (dropout,
then the layer as a convolution, ReLU). ``stitch_stages`` marks the paper's five stitch points
(after conv1, conv2, conv5, fc6, fc7: the outputs of pool1, pool2, pool5, fc6, fc7), which
``cross_stitch`` uses instead of a unit after every stage.

State dict: the keys and shapes of torchvision's ``alexnet`` without its last layer
(``features.0/3/6/8/10``, ``classifier.1`` (4096 x 9216), ``classifier.4`` (4096 x 4096); fc8,
``classifier.6``, is ImageNet's 1000-way classifier and is dropped). fc6 and fc7 keep the
*linear* layers' weight shapes and are applied as a 6 x 6 and a 1 x 1 convolution by viewing the
weight as (out, 256, 6, 6): torchvision flattens pool5 channel-major (c, y, x), which is exactly a
convolution kernel's layout, so ImageNet weights load unchanged (``model.pretrained`` = a state-dict
file saved from torchvision; ``classifier.6.*`` in it is ignored), with no load hook.

What the paper leaves open or what this module chose (see docs/models.md, "AlexNet"):

* **The AlexNet variant.** The paper uses Caffe's AlexNet (with local response normalisation and
  96/256/384/384/256 channels); this is torchvision's (64/192/384/256/256, no LRN), the one whose
  ImageNet weights PyTorch users have. Same stages, same stitch points.
* **fc6 on small inputs.** fc6 is a 6 x 6 convolution; FCN pads conv1 by 100 pixels so that any
  input gives a map, then crops. Here fc6 is padded (2 before, 3 after, zeros) so its map is pool5's
  size: an input of 32m x 32n pixels gives pool5, fc6 and fc7 maps of (m - 1) x (n - 1) (224 x 224:
  6 x 6, the map ImageNet's fc6 sees in one position), for any m, n >= 2. ``size_divisor`` is 32.
* **The head** (:class:`AlexNetHead`): FCN-32s's, a 1 x 1 convolution from fc7 to the task's
  channels and a bilinear upsampling of that coarse map to the input's size (the head knows the
  map of an input of 32m is m - 1, so it upsamples to 32 (h + 1) x 32 (w + 1)). Normals are
  regressed (three channels, normalised by the normal task's loss, as every normal head in mtlkit)
  rather than classified into a codebook of clusters: mtlkit's ``normal`` task kind is the
  regression one, and the paper's table reports angle errors that both give.
* **Dropout** 0.5 before fc6 and fc7 (torchvision's and FCN's placement); ReLU after fc7 (it is a
  hidden layer here, the heads read it).
* **Initialisation** without pretrained weights: torchvision's (PyTorch's defaults for conv and
  linear layers); the paper always starts from ImageNet (or one-task) weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.base import Backbone
from mtlkit.models.backbones.resnet import check_state
from mtlkit.models.blocks import scale_channels

#: torchvision's AlexNet channels: conv1..conv5, fc6, fc7
ALEXNET_CHANNELS = (64, 192, 384, 256, 256, 4096, 4096)
#: the stages' names (Misra et al.'s split points)
STAGE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
#: the stages a cross-stitch unit follows, and what the paper calls those points
STITCH_STAGES = (0, 1, 4, 5, 6)
STITCH_NAMES = ("pool1", "pool2", "pool5", "fc6", "fc7")
#: fc6's kernel: the 6 x 6 pool5 map of a 224 x 224 image
FC6_KERNEL = 6
#: torchvision's ImageNet weights (no download here: save them elsewhere, point model.pretrained at the file)
WEIGHT_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


class DenseLinear(nn.Linear):
    """A linear layer applied at every position of a map: a ``kernel`` x ``kernel`` convolution.

    The weight keeps ``nn.Linear``'s shape (out, in_channels * kernel^2), so a classifier's
    weights load as they are; ``forward`` views it as (out, in_channels, kernel, kernel).
    ``pad`` is (before, after) on both spatial axes.
    """

    def __init__(self, in_channels: int, out_features: int, kernel: int, pad: tuple[int, int] = (0, 0)) -> None:
        super().__init__(in_channels * kernel * kernel, out_features)
        self.in_channels = in_channels
        self.kernel = kernel
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        before, after = self.pad
        if before or after:
            x = F.pad(x, (before, after, before, after))
        w = self.weight.view(self.out_features, self.in_channels, k, k)
        return F.conv2d(x, w, self.bias)


class AlexNetHead(nn.Module):
    """FCN-32s's head: a 1 x 1 convolution to the task's channels, upsampled (bilinear) to the image.

    The AlexNet maps an input of 32m x 32n to (m - 1) x (n - 1), so the output is 32 (h + 1) x 32 (w + 1)
    for a map of h x w: exactly the input's size.
    """

    def __init__(self, in_channels: int, out_channels: int, align_corners: bool = False) -> None:
        super().__init__()
        self.score = nn.Conv2d(in_channels, out_channels, 1)
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        out = self.score(x)
        size = (32 * (x.shape[-2] + 1), 32 * (x.shape[-1] + 1))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=self.align_corners)


class AlexNet(Backbone):
    """torchvision's AlexNet without fc8, fully convolutional; stages conv1..conv5, fc6, fc7."""

    name = "alexnet"
    size_divisor = 32
    has_pretrained = True
    stitch_stages = STITCH_STAGES
    stitch_names = STITCH_NAMES

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.width = width
        c1, c2, c3, c4, c5, c6, c7 = scale_channels(ALEXNET_CHANNELS, width)
        # torchvision's indices: 0 conv1, 3 conv2, 6 conv3, 8 conv4, 10 conv5 (the rest are ReLUs and pools)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        # torchvision's indices: 0 dropout, 1 fc6, 2 ReLU, 3 dropout, 4 fc7, 5 ReLU
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            DenseLinear(c5, c6, FC6_KERNEL, pad=(2, 3)),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            DenseLinear(c6, c7, 1),
            nn.ReLU(inplace=True),
        )
        self.channels = (c1, c2, c3, c4, c5, c6, c7)
        self.strides = (8, 16, 16, 16, 32, 32, 32)
        self.stage_names = STAGE_NAMES

    #: which layers of ``features`` / ``classifier`` each stage runs
    _SLICES = (
        ("features", 0, 3),
        ("features", 3, 6),
        ("features", 6, 8),
        ("features", 8, 10),
        ("features", 10, 13),
        ("classifier", 0, 3),
        ("classifier", 3, 6),
    )

    def begin(self, x: Tensor) -> tuple[Tensor, None]:
        return x, None

    def stage(self, i: int, h: Tensor, ctx: None) -> Tensor:
        return self.stage_module(i)(h)

    def stage_module(self, i: int) -> nn.Module:
        """Stage ``i``'s layers (a view on ``features`` / ``classifier``: the keys stay torchvision's)."""
        part, start, stop = self._SLICES[i]
        seq = self.features if part == "features" else self.classifier
        return nn.Sequential(*[seq[j] for j in range(start, stop)])

    def make_head(self, out_channels: int, align_corners: bool = False) -> nn.Module:
        """FCN-32s's head on fc7 (:class:`AlexNetHead`)."""
        return AlexNetHead(self.out_channels, out_channels, align_corners)

    def load_pretrained(self, source: str) -> None:
        """Load torchvision's ImageNet AlexNet from a state-dict file (fc8, ``classifier.6``, dropped)."""
        if self.width != 1.0:
            raise ConfigError(f"model.pretrained: pretrained weights need model.width 1 (got {self.width})")
        if source == "imagenet":
            raise ConfigError(
                f"model.pretrained: imagenet is not downloaded for alexnet; download {WEIGHT_URL} elsewhere "
                "and set model.pretrained to that file's path"
            )
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"model.pretrained: {source!r} is neither 'none', 'imagenet' nor an existing file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle/zip errors of every kind
            raise ConfigError(f"model.pretrained: {source}: not a loadable state dict ({type(err).__name__})") from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ConfigError(f"model.pretrained: {source}: expected a dict of tensors (a model state dict)")
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        check_state(self.state_dict(), state, source)
        self.load_state_dict(state)
