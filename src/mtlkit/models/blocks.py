"""Building blocks every SegNet-based architecture is made of, so no architecture copies another.

* :class:`ConvBNReLU` / :class:`ConvStack`: conv-BN-ReLU layers (the conv has no bias: the BN's
  shift makes it redundant and its gradient is exactly zero in training mode).
* :class:`SegNetTrunk`: the SegNet encoder-decoder of the MTAN paper, a VGG-16 encoder of five
  stages (channels 64-128-256-512-512, 2-2-3-3-3 conv layers, 2x2 max-pooling that saves its
  indices) and a mirrored decoder (max-unpooling with those indices; the first conv of a decoder
  stage reduces the channels, as in the official MTAN code). Stages can take extra input channels
  (Dense concatenates shared features) and the last decoder stage can be left out.
* :class:`AttentionGate`: MTAN's mask ``sigmoid(BN(h(ReLU(BN(g(.))))))`` with 1x1 convs g, h (the one
  gate of every MTAN design, SegNet, ResNet and WRN).
* :class:`Head`: a task's prediction layer (3x3 conv, then 1x1 conv to the task's channels),
  as in the official code: two linear convs with biases, no normalisation in between.

Levels are numbered by resolution: level ``j`` works at ``1/2**j`` of the input (encoder stage
``j`` before its pooling, decoder stage ``j`` after its unpooling); the decoder runs 4, 3, ..., 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.config import MAX_WIDTH
from mtlkit.errors import ConfigError, shorten
from mtlkit.tasks import Task

#: SegNet / VGG-16 channels and conv layers per stage (level 0 to 4)
SEGNET_CHANNELS = (64, 128, 256, 512, 512)
SEGNET_DEPTHS = (2, 2, 3, 3, 3)
NUM_LEVELS = len(SEGNET_CHANNELS)
#: input height and width must be multiples of this (five 2x2 poolings)
SIZE_DIVISOR = 2**NUM_LEVELS


def scale_channels(channels: Sequence[int], width: float) -> tuple[int, ...]:
    """Channel counts multiplied by ``width`` (rounded, at least 1), so any width builds."""
    return tuple(max(1, round(c * width)) for c in channels)


def check_width(width: float) -> float:
    """``width`` as a float, or a ConfigError when it is not a number in (0, ``MAX_WIDTH``] (inf, NaN, 1e309...)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= MAX_WIDTH:
        raise ConfigError(f"model.width must be a positive number up to {MAX_WIDTH:g} (got {shorten(width)})")
    return float(width)


def check_dense_tasks(tasks: Sequence[Task], arch: str) -> None:
    """Raise a ConfigError unless every task is a dense (per-pixel) task with a unique name."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.arch {arch!r}: task names must be unique (got {', '.join(names)})")
    for t in tasks:
        if not t.dense:
            raise ConfigError(f"model.arch {arch!r} predicts dense maps; task {t.name!r} is {t.kind!r}")
        if "." in t.name or not t.name:
            raise ConfigError(f"model.arch {arch!r}: task name {t.name!r} must be non-empty without '.'")


def check_input(x: Tensor) -> None:
    """Raise a ConfigError unless ``x`` is an image batch whose size SegNet's five poolings divide."""
    if x.dim() != 4 or x.shape[-1] % SIZE_DIVISOR or x.shape[-2] % SIZE_DIVISOR:
        raise ConfigError(
            f"model input must be (B, C, H, W) with H and W multiples of {SIZE_DIVISOR}; "
            f"got shape {tuple(x.shape)} (set dataset.height / dataset.width)"
        )


def select_tasks(tasks: Sequence[Task], wanted: Sequence[str] | None) -> list[str]:
    """Names of the tasks ``decode`` must output: all when ``wanted`` is None, else checked."""
    names = [t.name for t in tasks]
    if wanted is None:
        return names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ConfigError(f"model has no task {', '.join(map(repr, unknown))} (it has {', '.join(names)})")
    return list(wanted)


def init_weights(module: nn.Module) -> None:
    """Xavier-normal conv weights, zero biases, unit BN scales: the official MTAN initialisation.

    Skipped for tensors on the meta device (parameter counting), which hold no values.
    """
    for m in module.modules():
        if getattr(getattr(m, "weight", None), "is_meta", False):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvBNReLU(nn.Sequential):
    """One conv (no bias) + BatchNorm + ReLU layer, padding that keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ConvStack(nn.Module):
    """``depth`` conv-BN-ReLU layers: ``in -> out`` then ``out -> out``; one SegNet stage's convs."""

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("a ConvStack needs at least one layer")
        self.layers = nn.ModuleList(
            [ConvBNReLU(in_channels if i == 0 else out_channels, out_channels) for i in range(depth)]
        )
        self.out_channels = out_channels

    def forward_first(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The first layer's output (MTAN's ``u``) and the stack's output (MTAN's ``p``)."""
        first = self.layers[0](x)
        out = first
        for layer in self.layers[1:]:
            out = layer(out)
        return first, out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_first(x)[1]


class AttentionGate(nn.Sequential):
    """MTAN's attention mask: 1x1 conv-BN-ReLU to ``mid_channels``, 1x1 conv-BN, sigmoid; values in (0, 1).

    ``mid_channels`` defaults to ``out_channels`` (the SegNet design); ``bias`` gives the 1x1 convs
    biases (the decathlon WRN's ``official`` variant). ``grouped`` names the parameters as the MTAN
    paper's SegNet checkpoints do (``g.0``, ``g.1``, ``h.0``, ``h.1``); ``grouped=False`` numbers the
    six layers flat (``0``, ``1``, ``3``, ``4``), as the authors' ResNet and WRN code. Same function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        *,
        bias: bool = False,
        grouped: bool = True,
    ) -> None:
        mid = out_channels if mid_channels is None else mid_channels
        first = [nn.Conv2d(in_channels, mid, 1, bias=bias), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
        second = [nn.Conv2d(mid, out_channels, 1, bias=bias), nn.BatchNorm2d(out_channels)]
        if grouped:
            super().__init__(OrderedDict(g=nn.Sequential(*first), h=nn.Sequential(*second), sigmoid=nn.Sigmoid()))
        else:
            super().__init__(*first, *second, nn.Sigmoid())


class Head(nn.Sequential):
    """A task's prediction layer: 3x3 conv ``c -> c`` then 1x1 conv ``c -> task channels`` (raw output)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.Conv2d(in_channels, out_channels, 1),
        )


def make_heads(tasks: Sequence[Task], in_channels: int) -> nn.ModuleDict:
    """One :class:`Head` per task, keyed by task name, sized by ``task.channels``."""
    return nn.ModuleDict({t.name: Head(in_channels, t.channels) for t in tasks})


def pool(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max-pooling that also returns the argmax indices the decoder unpools with."""
    return F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)


def unpool(x: Tensor, indices: Tensor, like: Tensor) -> Tensor:
    """2x2 max-unpooling to the spatial size of ``like`` (the features that were pooled)."""
    return F.max_unpool2d(x, indices, kernel_size=(2, 2), stride=(2, 2), output_size=like.shape[-2:])


@dataclass
class TrunkFeatures:
    """Every intermediate tensor of one SegNet pass, keyed by level (see the module docstring)."""

    enc_first: dict[int, Tensor] = field(default_factory=dict)  # first conv output of encoder stage j
    enc_out: dict[int, Tensor] = field(default_factory=dict)  # encoder stage j output, before pooling
    pooled: dict[int, Tensor] = field(default_factory=dict)  # after pooling (input of stage j + 1)
    indices: dict[int, Tensor] = field(default_factory=dict)
    dec_in: dict[int, Tensor] = field(default_factory=dict)  # unpooled input of decoder stage j
    dec_out: dict[int, Tensor] = field(default_factory=dict)  # decoder stage j output


class SegNetTrunk(nn.Module):
    """SegNet encoder-decoder without heads; ``enc_extra[j]`` / ``dec_extra[j]`` add input channels.

    Encoder stage j maps ``in_channels`` (j = 0) or ``channels[j-1]`` (+ ``enc_extra[j]``) to
    ``channels[j]``; decoder stage j maps ``channels[j]`` (+ ``dec_extra[j]``) to
    ``channels[j-1]`` (``channels[0]`` at level 0). ``final_decoder=False`` omits decoder stage 0
    (Dense's shared network: nothing reads its output).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        depths: Sequence[int],
        enc_extra: Sequence[int] | None = None,
        dec_extra: Sequence[int] | None = None,
        final_decoder: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) != NUM_LEVELS or len(depths) != NUM_LEVELS:
            raise ValueError(f"SegNet has {NUM_LEVELS} levels")
        enc_extra = tuple(enc_extra or (0,) * NUM_LEVELS)
        dec_extra = tuple(dec_extra or (0,) * NUM_LEVELS)
        self.channels = tuple(channels)
        self.enc_in_channels = tuple(
            (in_channels if j == 0 else channels[j - 1]) + enc_extra[j] for j in range(NUM_LEVELS)
        )
        self.dec_in_channels = tuple(channels[j] + dec_extra[j] for j in range(NUM_LEVELS))
        self.dec_out_channels = tuple(channels[max(j - 1, 0)] for j in range(NUM_LEVELS))
        self.enc = nn.ModuleList(
            [ConvStack(self.enc_in_channels[j], channels[j], depths[j]) for j in range(NUM_LEVELS)]
        )
        self.decoder_levels = tuple(range(NUM_LEVELS - 1, -1 if final_decoder else 0, -1))
        self.dec = nn.ModuleDict(
            {
                str(j): ConvStack(self.dec_in_channels[j], self.dec_out_channels[j], depths[j])
                for j in self.decoder_levels
            }
        )

    @property
    def out_channels(self) -> int:
        """Channels of the final decoder output (what the heads read)."""
        return self.dec_out_channels[0]

    def encoder(self, level: int) -> ConvStack:
        """The encoder stage of ``level``."""
        return cast(ConvStack, self.enc[level])

    def decoder(self, level: int) -> ConvStack:
        """The decoder stage of ``level``."""
        return cast(ConvStack, self.dec[str(level)])

    def run(self, x: Tensor) -> TrunkFeatures:
        """A full pass keeping every intermediate tensor (MTAN and Dense read them)."""
        f = TrunkFeatures()
        h = x
        for j in range(NUM_LEVELS):
            f.enc_first[j], f.enc_out[j] = self.encoder(j).forward_first(h)
            f.pooled[j], f.indices[j] = pool(f.enc_out[j])
            h = f.pooled[j]
        for j in range(NUM_LEVELS - 1, -1, -1):
            f.dec_in[j] = unpool(h, f.indices[j], f.enc_out[j])
            if j not in self.decoder_levels:
                break
            f.dec_out[j] = self.decoder(j)(f.dec_in[j])
            h = f.dec_out[j]
        return f

    def forward(self, x: Tensor) -> Tensor:
        """The final decoder output (full resolution, ``out_channels`` channels)."""
        return self.run(x).dec_out[0]
