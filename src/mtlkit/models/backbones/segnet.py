"""The MTAN paper's SegNet (VGG-16 encoder + mirrored decoder) as a staged backbone.

Ten stages: encoder stages 0-4 (convs, then 2x2 max-pooling whose indices go into the pass's
context) and decoder stages 4-0 (max-unpooling with those indices, then convs), so ``forward`` is
exactly :class:`~mtlkit.models.blocks.SegNetTrunk`'s output (full resolution, ``c_0`` channels).
Several copies of the backbone mixed stage by stage (cross-stitch, PLE, LTB) each unpool with
their own indices, as the MTAN authors' cross-stitch SegNet does.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mtlkit.models.backbones.base import Backbone, refuse_align_corners
from mtlkit.models.blocks import (
    NUM_LEVELS,
    SEGNET_CHANNELS,
    SEGNET_DEPTHS,
    SIZE_DIVISOR,
    Head,
    SegNetTrunk,
    init_weights,
    pool,
    scale_channels,
    unpool,
)


def trunk_stages(trunk: SegNetTrunk) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ten stages' output channels and strides of ``trunk`` (encoder stages 0-4, decoder levels 4-0)."""
    dec = trunk.dec_out_channels
    channels = tuple(trunk.channels) + tuple(dec[j] for j in range(NUM_LEVELS - 1, -1, -1))
    strides = tuple(2 ** (j + 1) for j in range(NUM_LEVELS)) + tuple(2**j for j in range(NUM_LEVELS - 1, -1, -1))
    return channels, strides


def trunk_stage(trunk: SegNetTrunk, i: int, h: Tensor, ctx: dict[Any, Tensor]) -> Tensor:
    """Stage ``i`` of ``trunk``: encoder stage ``i`` (conv + pool, indices into ``ctx``) for i < 5, else
    decoder level ``9 - i`` (unpool with ``ctx``'s indices + conv)."""
    if i < NUM_LEVELS:
        out = trunk.enc[i](h)
        pooled, ctx[i] = pool(out)
        ctx[("size", i)] = out
        return pooled
    j = 2 * NUM_LEVELS - 1 - i
    return trunk.decoder(j)(unpool(h, ctx[j], ctx[("size", j)]))


class SegNetBackbone(Backbone):
    """SegNet of the MTAN paper at ``width``; stages enc0..enc4, dec4..dec0."""

    name = "segnet"
    size_divisor = SIZE_DIVISOR
    paper_segnet = True

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c = scale_channels(SEGNET_CHANNELS, width)
        self.trunk = SegNetTrunk(in_channels, c, SEGNET_DEPTHS)
        self.channels, self.strides = trunk_stages(self.trunk)
        self.stage_names = tuple(f"enc{j}" for j in range(NUM_LEVELS)) + tuple(
            f"dec{j}" for j in range(NUM_LEVELS - 1, -1, -1)
        )
        init_weights(self)

    def begin(self, x: Tensor) -> tuple[Tensor, dict[Any, Tensor]]:
        """The image and an empty context (filled with each encoder stage's pre-pool output and indices)."""
        return x, {}

    def stage(self, i: int, h: Tensor, ctx: dict[Any, Tensor]) -> Tensor:
        """Encoder stage ``i`` (conv + pool) for i < 5, else decoder level ``9 - i`` (unpool + conv)."""
        return trunk_stage(self.trunk, i, h, ctx)

    def stage_module(self, i: int) -> nn.Module:
        return self.trunk.enc[i] if i < NUM_LEVELS else self.trunk.decoder(2 * NUM_LEVELS - 1 - i)

    def make_head(self, out_channels: int, align_corners: bool = False) -> nn.Module:
        """The MTAN paper's head (3x3 conv, 1x1 conv) at full resolution (nothing to upsample)."""
        refuse_align_corners(self.name, align_corners)
        head = Head(self.out_channels, out_channels)
        init_weights(head)
        return head
