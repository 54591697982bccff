"""Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019) on SegNet.

A shared SegNet (:class:`~mtlkit.models.blocks.SegNetTrunk`) plus, per task, one soft-attention
module at every encoder and decoder stage. At encoder level j, with ``u_j`` the output of the
stage's first conv layer and ``p_j`` the stage's output (both shared):

    a_j = sigmoid(BN(h(ReLU(BN(g([u_j ; â_{j-1}]))))))       (only ``u_0`` at j = 0)
    â_j = maxpool(f_j(a_j * p_j))

with g, h 1x1 convs (task-specific) and f_j a 3x3 conv-BN-ReLU shared by all tasks. At decoder
level j (4 down to 0), with ``v_j`` the stage's unpooled input and ``q_j`` its output:

    b_j = f'_j(upsample(â_prev))                            (bilinear x2; â_prev = â_4 at j = 4)
    â_j = sigmoid(BN(h(ReLU(BN(g([v_j ; b_j])))))) * q_j

and the task's head reads ``â_0``. Widths follow the official code, which reproduces the paper's
#P (1.77 on NYUv2): the gates of level j map ``2 c_j`` (encoder) or ``c_j + c_out`` (decoder)
channels to the masked tensor's channels; f_j maps ``c_j`` to ``c_{j+1}`` (``c_4`` to ``c_4``)
and f'_j maps the previous attended channels to the stage's output channels.

Resolved ambiguities: the paper's "intermediate features" ``u`` are the first conv layer's output
in the encoder and the unpooled input in the decoder (as the official code). Heads output raw
maps; normals are L2-normalised by ``Task.postprocess`` and inside the normal loss.

``encode`` returns the shared tensors the attention modules read, in the order
``u_0, p_0, ..., u_4, p_4, v_4, q_4, ..., v_0, q_0``; ``shared_parameters()`` is the trunk.
The f blocks, though reused by every task, sit after the representation: they are trained with
the sum of the task gradients. Masks are recorded as ``attention/<task>/enc<j>`` and
``attention/<task>/dec<j>`` (level j = resolution 1/2^j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.models.blocks import (
    NUM_LEVELS,
    SEGNET_CHANNELS,
    SEGNET_DEPTHS,
    AttentionGate,
    ConvBNReLU,
    SegNetTrunk,
    check_dense_tasks,
    check_input,
    check_width,
    init_weights,
    make_heads,
    scale_channels,
    select_tasks,
)
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


@ARCHITECTURES.register("mtan")
class MTAN(MultiTaskModel):
    """Shared SegNet + per-task attention at all five encoder and five decoder stages."""

    records = ("attention",)
    single_task_reference = "single"

    def __init__(self, tasks: list[Task], width: float = 1.0, *, in_channels: int = 3) -> None:
        super().__init__(tasks)
        check_dense_tasks(self.tasks, "mtan")
        c = scale_channels(SEGNET_CHANNELS, check_width(width))
        self.trunk = SegNetTrunk(in_channels, c, SEGNET_DEPTHS)
        t = self.trunk
        last = NUM_LEVELS - 1
        enc_f_out = [c[j + 1] if j < last else c[last] for j in range(NUM_LEVELS)]
        # channels of the attended features entering decoder level j (before f'_j)
        prev_dec = {j: enc_f_out[last] if j == last else t.dec_out_channels[j + 1] for j in range(NUM_LEVELS)}
        self.enc_f = nn.ModuleList([ConvBNReLU(c[j], enc_f_out[j]) for j in range(NUM_LEVELS)])
        self.dec_f = nn.ModuleList([ConvBNReLU(prev_dec[j], t.dec_out_channels[j]) for j in range(NUM_LEVELS)])
        self.enc_att = nn.ModuleDict({
            task.name: nn.ModuleList(
                [AttentionGate(c[0] if j == 0 else c[j] + enc_f_out[j - 1], c[j]) for j in range(NUM_LEVELS)]
            )
            for task in self.tasks
        })
        self.dec_att = nn.ModuleDict({
            task.name: nn.ModuleList(
                [AttentionGate(t.dec_in_channels[j] + t.dec_out_channels[j], t.dec_out_channels[j])
                 for j in range(NUM_LEVELS)]
            )
            for task in self.tasks
        })
        self.heads = make_heads(self.tasks, t.out_channels)
        init_weights(self)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The shared tensors the attention modules read: ``u_j, p_j`` (encoder), ``v_j, q_j`` (decoder)."""
        check_input(x)
        f = self.trunk.run(x)
        reps = []
        for j in range(NUM_LEVELS):
            reps += [f.enc_first[j], f.enc_out[j]]
        for j in range(NUM_LEVELS - 1, -1, -1):
            reps += [f.dec_in[j], f.dec_out[j]]
        return reps

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Each requested task's attention path through the shared tensors, then its head."""
        n = NUM_LEVELS
        u, p = reps[0:2 * n:2], reps[1:2 * n:2]
        # decoder tensors by level: reps[2n + 2k] is v at level n-1-k
        v = {n - 1 - k: reps[2 * n + 2 * k] for k in range(n)}
        q = {n - 1 - k: reps[2 * n + 2 * k + 1] for k in range(n)}
        out = {}
        for name in select_tasks(self.tasks, tasks):
            enc_att, dec_att = self.enc_att[name], self.dec_att[name]
            h = None
            for j in range(n):
                mask = enc_att[j](u[j] if h is None else torch.cat([u[j], h], dim=1))
                self.record(f"attention/{name}/enc{j}", mask)
                h = F.max_pool2d(self.enc_f[j](mask * p[j]), kernel_size=2, stride=2)
            for j in range(n - 1, -1, -1):
                up = F.interpolate(h, size=q[j].shape[-2:], mode="bilinear", align_corners=True)
                b = self.dec_f[j](up)
                mask = dec_att[j](torch.cat([v[j], b], dim=1))
                self.record(f"attention/{name}/dec{j}", mask)
                h = mask * q[j]
            out[name] = self.heads[name](h)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The SegNet trunk: every parameter ``encode`` uses."""
        return list(self.trunk.parameters())
