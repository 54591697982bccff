"""Evaluation over a whole split under an evaluation protocol (``mtlkit.metrics.protocols``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtlkit.config import Config
from mtlkit.metrics.protocols import protocol_meter
from mtlkit.tasks import Task
from mtlkit.tasks.base import loss_precision
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
    protocol: str = "pooled",
    protocol_batch: int | None = None,
) -> dict[str, float]:
    """``{"loss/<task>": mean loss, "<task>/<metric>": value}`` over every sample of ``loader``.

    ``protocol`` picks the meters (pooled, mtan_official, mtan_paper); ``protocol_batch`` is the
    batch size of the MTAN protocols' per-batch means (default: the loader's batch size).
    """
    model.eval()
    chunk = protocol_batch or loader.batch_size or 1
    meters = {t.name: protocol_meter(t, protocol, chunk) for t in tasks}
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
            pred = loss_precision(preds[t.name])
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


def protocol_args(cfg: Config) -> dict[str, Any]:
    """``evaluate`` keyword arguments of the config's evaluation protocol."""
    return {"protocol": cfg.eval.protocol, "protocol_batch": cfg.eval.batch_size or cfg.train.batch_size}


def protocol_record(cfg: Config) -> dict[str, Any]:
    """What results.json says about the evaluation: protocol, its batch size, best-epoch selection."""
    args = protocol_args(cfg)
    return {"protocol": args["protocol"], "batch_size": args["protocol_batch"],
            "select_best": cfg.eval.select_best, "report_last": cfg.eval.report_last}


def best_fields(cfg: Config, best: dict[str, Any]) -> dict[str, Any]:
    """results.json's ``best``/``best_epoch``; absent (None, with the reason) without model selection."""
    if cfg.eval.select_best:
        return {"best": best["val"], "best_epoch": best["epoch"]}
    return {"best": None, "best_epoch": None,
            "best_note": "no best epoch: eval.select_best is off because the only evaluated split "
                         "(val) is the one the results table reports"}
