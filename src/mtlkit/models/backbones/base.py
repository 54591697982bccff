"""The contract every backbone meets, so an architecture is written once over any of them.

A backbone is a staged network: ``begin(x)`` turns the image into the first stage's input and a
per-pass context (SegNet keeps its pooling indices there; ResNets need none), ``stage(i, h, ctx)``
runs stage ``i``, and ``forward(x)`` runs them all and returns the features the heads read.
``channels[i]`` / ``strides[i]`` give stage ``i``'s output channels and its resolution relative
to the input (1/stride); ``out_channels`` / ``output_stride`` those of ``forward``'s features.
``make_head(c, align_corners)`` builds the backbone's prediction head for a task with ``c`` output
channels, returning a map at the input's resolution; ``align_corners`` is the convention of a head
that upsamples (``model.align_corners``), and a backbone whose heads do not upsample refuses True.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from mtlkit.errors import ConfigError


class Backbone(nn.Module):
    """Base class of the staged encoders (and encoder-decoders) architectures are built on."""

    name: str = "backbone"
    channels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    #: input height and width must be multiples of this
    size_divisor: int = 1
    #: True: the heads predict per-pixel maps (dense tasks); False: one output per image (image-level tasks)
    dense_heads: ClassVar[bool] = True
    #: whether ``load_pretrained`` exists (``model.pretrained`` other than ``none``)
    has_pretrained: ClassVar[bool] = False
    #: True for the MTAN paper's SegNet: ``single``, ``mtan`` and ``cross_stitch`` build the paper's
    #: exact layout (module names, stitch points) on it
    paper_segnet: ClassVar[bool] = False
    #: the stages' names (``hps``'s ``branch_at`` names one); empty: ``stage0``, ``stage1``, ...
    stage_names: tuple[str, ...] = ()
    #: the stages ``cross_stitch`` puts a unit after (None: every stage) and those points' names
    #: (AlexNet: Misra et al.'s pool1, pool2, pool5, fc6, fc7)
    stitch_stages: ClassVar[tuple[int, ...] | None] = None
    stitch_names: ClassVar[tuple[str, ...] | None] = None

    @property
    def num_stages(self) -> int:
        return len(self.channels)

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def output_stride(self) -> int:
        return self.strides[-1]

    def stage_labels(self) -> tuple[str, ...]:
        """Every stage's name: ``stage_names``, or ``stage<i>`` where the backbone gives none."""
        return self.stage_names or tuple(f"stage{i}" for i in range(self.num_stages))

    def begin(self, x: Tensor) -> tuple[Tensor, Any]:
        """The first stage's input and a fresh per-pass context."""
        raise NotImplementedError

    def stage(self, i: int, h: Tensor, ctx: Any) -> Tensor:
        """Stage ``i`` applied to ``h`` (may read / write ``ctx``)."""
        raise NotImplementedError

    def stage_module(self, i: int) -> nn.Module:
        """The module holding stage ``i``'s parameters (stage 0 may use ``begin``'s too)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Every stage in turn: the features the heads read."""
        h, ctx = self.begin(x)
        for i in range(self.num_stages):
            h = self.stage(i, h, ctx)
        return h

    def load_pretrained(self, source: str) -> None:
        """Load pretrained weights (``imagenet`` or a state-dict file); only where ``has_pretrained``."""
        raise NotImplementedError(f"backbone {self.name!r} has no pretrained weights")

    def make_head(self, out_channels: int, align_corners: bool = False) -> nn.Module:
        """A task head reading ``forward``'s features and predicting at the input resolution.

        ``align_corners``: the bilinear convention of a head that upsamples its output.
        """
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Raise a ConfigError unless ``x`` is an image batch whose size the backbone divides."""
        d = self.size_divisor
        if x.dim() != 4 or x.shape[-1] % d or x.shape[-2] % d:
            raise ConfigError(
                f"model input must be (B, C, H, W) with H and W multiples of {d} for backbone {self.name!r}; "
                f"got shape {tuple(x.shape)} (set dataset.height / dataset.width)"
            )


def refuse_align_corners(backbone: str, align_corners: bool) -> None:
    """A ConfigError when ``align_corners`` is asked of ``backbone``, whose heads do not upsample."""
    if align_corners:
        raise ConfigError(
            f"model.align_corners: the {backbone} backbone's heads do not upsample (the option "
            "sets the ResNet backbones' DeepLabV3 upsampling); leave it false"
        )
