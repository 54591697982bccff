"""A plain, unfused MTAN, written the way a researcher would transcribe the paper: the yardstick.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019: a SegNet
(VGG-16 encoder, mirrored decoder with max-unpooling) shared by all tasks, and for every task a
soft-attention module at each of the five encoder and five decoder blocks. Written from the
paper's description in straightforward PyTorch: Python lists of per-task modules, a ``torch.cat``
of the two inputs before every attention module's first 1x1 conv, a loop over levels with a loop
over tasks inside (the order of the paper's figure), default float32 contiguous tensors, and a
training step with default Adam.

It computes the same function as :class:`mtlkit.models.mtan.MTAN` (same widths, the same
resolved ambiguities: the "intermediate feature" is a block's first conv output in the encoder
and its unpooled input in the decoder; f maps to the next block's width; bilinear x2 upsampling
with aligned corners; heads of a 3x3 conv and a 1x1 conv), so the two can be timed on the same
input and checked equal: :func:`load_from_mtlkit` copies an mtlkit model's weights into it.

    from reference_mtan import ReferenceMTAN, load_from_mtlkit, reference_step
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit.models.blocks import init_weights

VGG_CHANNELS = [64, 128, 256, 512, 512]
VGG_LAYERS = [2, 2, 3, 3, 3]


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def attention(cin: int, cout: int) -> nn.Sequential:
    """The paper's attention module: [1x1 conv, BN, ReLU], [1x1 conv, BN, sigmoid]."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.Sigmoid(),
    )


class ReferenceMTAN(nn.Module):
    """SegNet + task-specific attention; ``forward`` returns one raw prediction map per task."""

    def __init__(self, task_channels: dict[str, int], width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.task_names = list(task_channels)
        ch = [max(1, round(c * width)) for c in VGG_CHANNELS]
        self.ch = ch
        # --- shared SegNet
        self.encoder = nn.ModuleList()
        for i in range(5):
            cin = in_channels if i == 0 else ch[i - 1]
            self.encoder.append(
                nn.ModuleList([conv_bn_relu(cin if n == 0 else ch[i], ch[i]) for n in range(VGG_LAYERS[i])])
            )
        dec_out = [ch[0], ch[0], ch[1], ch[2], ch[3]]  # decoder block i maps ch[i] to ch[i-1]
        self.decoder = nn.ModuleList()
        for i in range(5):
            self.decoder.append(
                nn.ModuleList([conv_bn_relu(ch[i] if n == 0 else dec_out[i], dec_out[i]) for n in range(VGG_LAYERS[i])])
            )
        # --- shared 3x3 blocks of the attention path (f in the paper)
        enc_f_out = [ch[1], ch[2], ch[3], ch[4], ch[4]]
        self.encoder_block_att = nn.ModuleList([conv_bn_relu(ch[i], enc_f_out[i]) for i in range(5)])
        dec_f_in = [dec_out[1], dec_out[2], dec_out[3], dec_out[4], enc_f_out[4]]
        self.decoder_block_att = nn.ModuleList([conv_bn_relu(dec_f_in[i], dec_out[i]) for i in range(5)])
        # --- task-specific attention modules (g, h in the paper) and prediction heads
        self.encoder_att = nn.ModuleList()
        self.decoder_att = nn.ModuleList()
        self.heads = nn.ModuleList()
        for name in self.task_names:
            self.encoder_att.append(
                nn.ModuleList([attention(ch[0] if i == 0 else ch[i] + enc_f_out[i - 1], ch[i]) for i in range(5)])
            )
            self.decoder_att.append(nn.ModuleList([attention(ch[i] + dec_out[i], dec_out[i]) for i in range(5)]))
            self.heads.append(
                nn.Sequential(nn.Conv2d(ch[0], ch[0], 3, padding=1), nn.Conv2d(ch[0], task_channels[name], 1))
            )
        init_weights(self)  # the same initialisation as mtlkit's (weights are usually copied in anyway)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # shared encoder: keep each block's first conv output (u), output (p) and pooling indices
        u, p, indices = [], [], []
        for i in range(5):
            first = self.encoder[i][0](x)
            out = first
            for layer in self.encoder[i][1:]:
                out = layer(out)
            u.append(first)
            p.append(out)
            x, idx = F.max_pool2d(out, kernel_size=2, stride=2, return_indices=True)
            indices.append(idx)
        # shared decoder: keep each block's unpooled input (v) and output (q)
        v, q = [None] * 5, [None] * 5
        for i in range(4, -1, -1):
            x = F.max_unpool2d(x, indices[i], kernel_size=2, stride=2, output_size=p[i].shape[-2:])
            v[i] = x
            for layer in self.decoder[i]:
                x = layer(x)
            q[i] = x
        # task attention through the encoder
        n_tasks = len(self.task_names)
        att = [None] * n_tasks
        for i in range(5):
            for t in range(n_tasks):
                inp = u[0] if i == 0 else torch.cat([u[i], att[t]], dim=1)
                mask = self.encoder_att[t][i](inp)
                att[t] = F.max_pool2d(self.encoder_block_att[i](mask * p[i]), kernel_size=2, stride=2)
        # ... and through the decoder
        for i in range(4, -1, -1):
            for t in range(n_tasks):
                up = F.interpolate(att[t], size=q[i].shape[-2:], mode="bilinear", align_corners=True)
                b = self.decoder_block_att[i](up)
                mask = self.decoder_att[t][i](torch.cat([v[i], b], dim=1))
                att[t] = mask * q[i]
        return {name: self.heads[t](att[t]) for t, name in enumerate(self.task_names)}


# ----------------------------------------------------------------------------- losses and step


def task_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's losses: cross-entropy (label -1 ignored), L1 on valid depth, 1 - cosine of normals."""
    if kind == "segmentation":
        target = target.long()
        valid = (target != -1).float()
        ce = F.cross_entropy(pred, target.clamp(min=0), reduction="none")
        return (ce * valid).sum() / valid.sum().clamp(min=1)
    if kind == "depth":
        valid = (target != 0).float()
        return ((pred - target).abs() * valid).sum() / valid.sum().clamp(min=1)
    if kind == "normal":
        pred = F.normalize(pred, p=2, dim=1)
        valid = (target.abs().sum(dim=1) != 0).float()
        return 1 - ((pred * target).sum(dim=1) * valid).sum() / valid.sum().clamp(min=1)
    raise ValueError(f"unknown task kind {kind!r}")


def reference_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    kinds: dict[str, str],
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One training step with equal weighting: forward, the task losses, backward, optimizer step.

    ``autocast_dtype``: run the forward under autocast (the losses are computed in float32).
    """
    optimizer.zero_grad()
    x = batch["image"]
    with torch.autocast(device_type=x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        preds = model(x)
    losses = torch.stack([task_loss(kinds[name], preds[name].float(), batch[name]) for name in kinds])
    losses.sum().backward()
    optimizer.step()
    return losses.detach()


# ----------------------------------------------------------------------------- weights from mtlkit


def _copy(dst: nn.Module, src: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst`` (same layers in the same order)."""
    d, s = dst.state_dict(), src.state_dict()
    if len(d) != len(s):
        raise ValueError(f"{type(dst).__name__} has {len(d)} tensors, the source {len(s)}")
    with torch.no_grad():
        for (dk, dv), (sk, sv) in zip(d.items(), s.items()):
            if dv.shape != sv.shape:
                raise ValueError(f"{dk}: shape {tuple(dv.shape)} != source {sk} {tuple(sv.shape)}")
            dv.copy_(sv)


def load_from_mtlkit(ref: ReferenceMTAN, model: nn.Module) -> ReferenceMTAN:
    """Copy the weights (and BatchNorm statistics) of an ``mtlkit.models.mtan.MTAN`` into ``ref``."""
    if [t.name for t in model.tasks] != ref.task_names:
        raise ValueError("the two models must have the same tasks in the same order")
    trunk = model.trunk
    for i in range(5):
        for n, layer in enumerate(ref.encoder[i]):
            _copy(layer, trunk.enc[i].layers[n])
        for n, layer in enumerate(ref.decoder[i]):
            _copy(layer, trunk.dec[str(i)].layers[n])
        _copy(ref.encoder_block_att[i], model.enc_f[i])
        _copy(ref.decoder_block_att[i], model.dec_f[i])
    for t, name in enumerate(ref.task_names):
        for i in range(5):
            _copy(ref.encoder_att[t][i], model.enc_att[name][i])
            _copy(ref.decoder_att[t][i], model.dec_att[name][i])
        _copy(ref.heads[t], model.heads[name])
    return ref
