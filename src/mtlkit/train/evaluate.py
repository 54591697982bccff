"""Evaluation over a whole split under an evaluation protocol (``mtlkit.metrics.protocols``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtlkit.config import Config
from mtlkit.metrics.protocols import protocol_meter
from mtlkit.tasks import Task
from mtlkit.tasks.base import labelled_key, loss_precision
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
        for t in tasks:
            if t.name not in present:
                continue
            pred, target = loss_precision(preds[t.name]), batch[t.name]
            mask = batch.get(labelled_key(t.name))
            if mask is not None and not bool(mask.all()):  # partially labelled: score the labelled samples
                rows = mask.reshape(-1).nonzero().reshape(-1)
                pred, target = pred.index_select(0, rows), target.index_select(0, rows)
            n = int(target.shape[0])
            if n == 0:
                continue
            loss_sum[t.name] += float(t.loss(pred, target)) * n
            loss_n[t.name] += n
            meters[t.name].update(t.postprocess(pred), target)
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


#: results.json's ``best_note`` of a run without model selection
NO_BEST_NOTE = (
    "no best epoch: eval.select_best is off because the only evaluated split (val) is the one the results table reports"
)


@dataclass(frozen=True)
class Evaluation:
    """How the loop evaluates each epoch and whether it keeps a best one (the config's ``eval`` section).

    ``protocol``: the meters (:mod:`mtlkit.metrics.protocols`); ``batch_size``: images per batch of
    the MTAN protocols' batch means (None: the validation loader's); ``select_best``: pick a best
    epoch (``checkpoints/best.pt``, results' ``best``); ``report_last``: reports average the last K
    epochs. :meth:`results` is what results.json says about it.
    """

    protocol: str = "pooled"
    batch_size: int | None = None
    select_best: bool = True
    report_last: int = 1

    @classmethod
    def from_config(cls, cfg: Config) -> Evaluation:
        """The config's evaluation (the MTAN protocols' batch defaults to ``train.batch_size``)."""
        return cls(
            cfg.eval.protocol, cfg.eval.batch_size or cfg.train.batch_size, cfg.eval.select_best, cfg.eval.report_last
        )

    def __call__(
        self,
        model: nn.Module,
        tasks: list[Task],
        loader: DataLoader,
        device: torch.device,
        channels_last: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> dict[str, float]:
        """:func:`evaluate` under this protocol."""
        return evaluate(
            model,
            tasks,
            loader,
            device,
            channels_last=channels_last,
            autocast_dtype=autocast_dtype,
            protocol=self.protocol,
            protocol_batch=self.batch_size,
        )

    def results(self) -> dict[str, Any]:
        """results.json's ``eval`` (and ``best_note`` without model selection)."""
        out: dict[str, Any] = {
            "eval": {
                "protocol": self.protocol,
                "batch_size": self.batch_size,
                "select_best": self.select_best,
                "report_last": self.report_last,
            }
        }
        if not self.select_best:
            out["best_note"] = NO_BEST_NOTE
        return out


def protocol_args(cfg: Config) -> dict[str, Any]:
    """``evaluate`` keyword arguments of the config's evaluation protocol."""
    evaluation = Evaluation.from_config(cfg)
    return {"protocol": evaluation.protocol, "protocol_batch": evaluation.batch_size}
