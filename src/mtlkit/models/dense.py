"""The MTAN paper's "Dense" baseline: a shared SegNet plus one SegNet per task that receives the
shared network's features at every stage, without attention.

Following the official MTAN code, task encoder stage j (j > 0) reads ``[task pooled_{j-1} ;
shared pooled_{j-1}]`` and task decoder stage j reads ``[task unpooled_j ; shared unpooled_j]``
(each network unpools with its own pooling indices); a task head reads its network's output.

Resolved ambiguities:

* The official code feeds the image itself to each task's first stage. Here the first stage reads
  the shared network's first conv layer output instead, so the task networks depend on the
  image only through the shared tensors ``encode`` returns (the representation contract that
  gradient methods rely on). This adds ``(c0 - 3) * c0 * 9`` parameters per task (0.14 % of a
  SegNet at width 1); #P is 4.94 on NYUv2 (paper: 4.95).
* The official shared decoder's last stage produces features nothing reads (a dead branch); it
  is left out (``final_decoder=False``).
* Decoder stages reduce channels in their first conv, like every SegNet here (the official Dense
  widens the first conv of the level-0 task stage instead: a 0.4 % difference per task).

``encode`` returns the shared tensors the task networks read: the stem ``u_0``, the pooled
outputs of encoder stages 0-3, and the unpooled inputs of decoder stages 4 down to 0.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.models.blocks import (
    NUM_LEVELS,
    SEGNET_CHANNELS,
    SEGNET_DEPTHS,
    SegNetTrunk,
    check_dense_tasks,
    check_input,
    check_width,
    init_weights,
    make_heads,
    pool,
    scale_channels,
    select_tasks,
    unpool,
)
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("dense")
class Dense(MultiTaskModel):
    """Shared SegNet + per-task SegNets fed the shared features at every stage."""

    single_task_reference = "single"
    own_backbone = "segnet"
    label = "Dense"

    def __init__(self, tasks: list[Task], width: float = 1.0, *, in_channels: int = 3) -> None:
        super().__init__(tasks)
        check_dense_tasks(self.tasks, "dense")
        c = scale_channels(SEGNET_CHANNELS, check_width(width))
        self.shared = SegNetTrunk(in_channels, c, SEGNET_DEPTHS, final_decoder=False)
        enc_extra = (0,) + tuple(c[j - 1] for j in range(1, NUM_LEVELS))
        dec_extra = tuple(self.shared.dec_in_channels)
        self.nets = nn.ModuleDict(
            {t.name: SegNetTrunk(c[0], c, SEGNET_DEPTHS, enc_extra=enc_extra, dec_extra=dec_extra) for t in self.tasks}
        )
        self.heads = make_heads(self.tasks, c[0])
        init_weights(self)

    def encode(self, x: Tensor) -> list[Tensor]:
        """``[u_0, pooled_0..pooled_3, unpooled_4..unpooled_0]`` of the shared network."""
        check_input(x)
        f = self.shared.run(x)
        return (
            [f.enc_first[0]]
            + [f.pooled[j] for j in range(NUM_LEVELS - 1)]
            + [f.dec_in[j] for j in range(NUM_LEVELS - 1, -1, -1)]
        )

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's network over the shared features, then its head."""
        n = NUM_LEVELS
        stem, pooled = reps[0], reps[1:n]
        dec_in = {n - 1 - k: reps[n + k] for k in range(n)}
        out = {}
        for name in select_tasks(self.tasks, tasks):
            net = cast(SegNetTrunk, self.nets[name])
            enc_out, indices = {}, {}
            h = stem
            for j in range(n):
                enc_out[j] = net.encoder(j)(h if j == 0 else torch.cat([h, pooled[j - 1]], dim=1))
                h, indices[j] = pool(enc_out[j])
            for j in range(n - 1, -1, -1):
                up = unpool(h, indices[j], enc_out[j])
                h = net.decoder(j)(torch.cat([up, dec_in[j]], dim=1))
            out[name] = self.heads[name](h)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared SegNet."""
        return list(self.shared.parameters())
