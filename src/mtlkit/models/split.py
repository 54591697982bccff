"""The MTAN paper's hard-sharing baselines "Split, Wide" and "Split, Deep".

Both are one SegNet shared by all tasks and split into task heads at the last layer, grown so their
size is comparable to MTAN's, following the official MTAN code:

* ``split_wide``: the deepest stage's channels go from 512 to 1024 (channels 64-128-256-512-1024);
  #P 1.76 on NYUv2 (paper: 1.75).
* ``split_deep``: every conv layer becomes two (4-4-6-6-6 layers per encoder and decoder stage);
  #P 2.03 (paper: 2.0).
"""

from __future__ import annotations

from mtlkit.models.segnet import SegNet
from mtlkit.registry import ARCHITECTURES


@ARCHITECTURES.register("split_wide")
class SplitWide(SegNet):
    """Hard sharing, SegNet with a 1024-channel deepest stage; the representation is the trunk output."""

    arch_name = "split_wide"
    label = "Split, Wide"
    base_channels = (64, 128, 256, 512, 1024)


@ARCHITECTURES.register("split_deep")
class SplitDeep(SegNet):
    """Hard sharing, SegNet with twice the conv layers per stage; the representation is the trunk output."""

    arch_name = "split_deep"
    label = "Split, Deep"
    depth_factor = 2
