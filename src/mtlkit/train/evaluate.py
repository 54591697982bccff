"""Evaluation over a whole split: metrics from streaming meters (never a mean of batch values)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtlkit.tasks import Task
from mtlkit.train.distributed import all_reduce_sum


def move_batch(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """Tensors of a batch onto ``device`` (images optionally channels-last)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if k == "image" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tasks: list[Task],
    loader: DataLoader,
    device: torch.device,
    progress: bool = False,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """``{"loss/<task>": mean loss, "<task>/<metric>": value}`` over every sample of ``loader``."""
    model.eval()
    meters = {t.name: t.new_meter() for t in tasks}
    loss_sum = {t.name: 0.0 for t in tasks}
    loss_n = {t.name: 0 for t in tasks}
    names = [t.name for t in tasks]
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        batch = move_batch(batch, device, channels_last)
        present = [n for n in names if n in batch]
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                preds = model(batch["image"], present)
        else:
            preds = model(batch["image"], present)
        n = batch["image"].shape[0]
        for t in tasks:
            if t.name not in present:
                continue
            pred = preds[t.name].float()
            loss_sum[t.name] += float(t.loss(pred, batch[t.name])) * n
            loss_n[t.name] += n
            meters[t.name].update(t.postprocess(pred), batch[t.name])
    out: dict[str, float] = {}
    sums = all_reduce_sum(torch.tensor([[loss_sum[t.name], loss_n[t.name]] for t in tasks], dtype=torch.float64))
    for t, (total, count) in zip(tasks, sums.tolist()):
        meters[t.name].all_reduce()  # every rank joins every collective, even with no batch of this task
        if count == 0:
            continue
        out[f"loss/{t.name}"] = total / count
        for k, v in meters[t.name].compute().items():
            out[f"{t.name}/{k}"] = float(v)
    model.train()
    return out
