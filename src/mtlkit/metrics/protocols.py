"""Evaluation protocols: which meter scores each task, so numbers can be compared with a paper's.

- ``pooled`` (the default): every metric over every valid pixel of the whole set (one confusion
  matrix; depth/normal statistics over all pixels pooled; within-t in percent).
- ``mtan_official``: the MTAN authors' current code. Segmentation as ``pooled``; depth and normal
  metrics computed on consecutive chunks of ``batch_size`` images (the authors' batch size) and
  averaged over chunks: abs/rel error = mean over chunks of the chunk's pixel mean, normal median =
  mean of the chunks' medians, within-t = mean of the chunks' fractions (0-1, not percent).
- ``mtan_paper``: the metric code behind the MTAN paper's tables (kept as "legacy" by the authors).
  Per image i, mIoU_i = mean over the classes c with |(P_c ∪ T_c) ∩ L| > 0 of |P_c ∩ T_c| /
  |(P_c ∪ T_c) ∩ L| (L: labelled pixels; unlabelled pixels are left out of the union) and
  pix_acc_i = |{p in L: pred = target}| / |L|; both are averaged over images (images without a
  labelled pixel are skipped). Depth and normal as in ``mtan_official``.

Chunks are formed from the images in evaluation order, independent of the loader's batch size (so
an evaluation batch of 8 with ``batch_size`` 2 gives the authors' numbers); the last chunk may be
smaller; a chunk without a valid pixel is skipped. Under torch.distributed each rank chunks its own
share and the chunk values are summed over ranks. Each task kind picks its meter under the MTAN
protocols (``TaskKind.protocol_meter``); kinds the MTAN code does not score (classification, ...)
use the pooled meter in every protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mtlkit.metrics.base import Meter, MetricError, sum_across_ranks
from mtlkit.metrics.depth import depth_metrics
from mtlkit.metrics.normal import KEYS as NORMAL_KEYS
from mtlkit.metrics.normal import THRESHOLDS, angular_errors
from mtlkit.metrics.segmentation import _confusion, metrics_from_confusion

if TYPE_CHECKING:
    from mtlkit.tasks import Task

PROTOCOLS = ("pooled", "mtan_official", "mtan_paper")

#: one-line description of each protocol, for report captions and ``--help``
DESCRIPTIONS = {
    "pooled": "metrics pooled over every pixel of the set (confusion-matrix mIoU; within-t in %)",
    "mtan_official": "MTAN authors' current code: confusion-matrix mIoU; depth/normal metrics as means over "
    "batches of {b} images (median = mean of batch medians; within-t as fractions)",
    "mtan_paper": "MTAN paper's table: per-image mIoU (classes in the image's prediction or target, unlabelled "
    "pixels out of the union) and pixel accuracy, averaged over images; depth/normal as means "
    "over batches of {b} images (within-t as fractions)",
}


def describe(protocol: str, batch_size: int | None) -> str:
    """The protocol's one-line description, with its batch size filled in."""
    check_protocol(protocol)
    return DESCRIPTIONS[protocol].format(b=batch_size if batch_size is not None else "?")


def check_protocol(protocol: str) -> str:
    """``protocol`` itself, or MetricError naming the known ones."""
    if protocol not in PROTOCOLS:
        raise MetricError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


class PerImageSegmentationMeter(Meter):
    """Per-image mIoU and pixel accuracy averaged over images (the MTAN paper's metric)."""

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def _reset_state(self) -> None:
        self._sums = torch.zeros(2, dtype=torch.float64)  # sum over images of miou, pix_acc
        self._count = torch.zeros(1, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape or pred.ndim < 2:
            raise MetricError(
                f"segmentation: pred shape {tuple(pred.shape)} does not match target {tuple(target.shape)} (N, H, W)"
            )
        for p, t in zip(pred, target):
            cm = _confusion(p, t, self.num_classes, self.ignore_index).cpu()
            if int(cm.sum()) == 0:
                continue
            m = metrics_from_confusion(cm)
            self._sums += torch.tensor([m["miou"], m["pix_acc"]], dtype=torch.float64)
            self._count += 1

    def _all_reduce(self) -> None:
        self._sums = sum_across_ranks(self._sums)
        self._count = sum_across_ranks(self._count)

    def compute(self) -> dict[str, float]:
        """``{"miou", "pix_acc"}``: means over images (fractions); NaN before any labelled image."""
        n = int(self._count.item())
        if n == 0:
            return {"miou": math.nan, "pix_acc": math.nan}
        s = self._sums.tolist()
        return {"miou": s[0] / n, "pix_acc": s[1] / n}


class ChunkMeanMeter(Meter):
    """Metrics computed on consecutive chunks of ``batch_size`` images, then averaged over chunks."""

    def __init__(
        self, chunk_metrics: Callable[[Tensor, Tensor], dict[str, float]], keys: tuple[str, ...], batch_size: int
    ) -> None:
        if batch_size < 1:
            raise MetricError(f"protocol batch size must be >= 1, got {batch_size}")
        self.chunk_metrics, self.keys, self.batch_size = chunk_metrics, keys, batch_size
        super().__init__()

    def _reset_state(self) -> None:
        self._sums = torch.zeros(len(self.keys), dtype=torch.float64)
        self._count = torch.zeros(1, dtype=torch.int64)
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._pending_n = 0

    def _score(self, pred: Tensor, target: Tensor) -> None:
        values = self.chunk_metrics(pred, target)
        row = [values[k] for k in self.keys]
        if any(not math.isfinite(v) for v in row):
            return
        self._sums += torch.tensor(row, dtype=torch.float64)
        self._count += 1

    def _update(self, pred: Tensor, target: Tensor) -> None:
        for i in range(pred.shape[0]):
            self._pending.append((pred[i : i + 1].cpu(), target[i : i + 1].cpu()))
            self._pending_n += 1
            if self._pending_n == self.batch_size:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._score(torch.cat([p for p, _ in self._pending]), torch.cat([t for _, t in self._pending]))
        self._pending, self._pending_n = [], 0

    def _all_reduce(self) -> None:
        self._flush()
        self._sums = sum_across_ranks(self._sums)
        self._count = sum_across_ranks(self._count)

    def compute(self) -> dict[str, float]:
        """Each metric's mean over chunks (a partial last chunk counts as one); NaN before any chunk."""
        if not self._reduced:
            self._flush()
        n = int(self._count.item())
        if n == 0:
            return {k: math.nan for k in self.keys}
        return {k: s / n for k, s in zip(self.keys, self._sums.tolist())}


def chunk_depth_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """abs_err and rel_err pooled over the valid pixels of one chunk (the authors' depth_error)."""
    return depth_metrics(pred, target)


def chunk_normal_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Mean, median (NumPy's) and fractions below each threshold of one chunk's angles (degrees)."""
    angles = angular_errors(pred, target).cpu().numpy()
    if angles.size == 0:
        return {k: math.nan for k in NORMAL_KEYS}
    out = {"mean": float(angles.mean()), "median": float(np.median(angles))}
    for th in THRESHOLDS:
        out[f"within_{th:g}"] = float((angles < th).mean())
    return out


def protocol_meter(task: Task, protocol: str, batch_size: int) -> Meter:
    """The meter that scores ``task`` under ``protocol`` (chunked metrics over ``batch_size`` images).

    ``pooled`` is every kind's own meter; under the MTAN protocols the task's kind says
    (``TaskKind.protocol_meter``: segmentation, depth and normal swap in the meters above, other kinds
    keep their pooled meter).
    """
    check_protocol(protocol)
    if protocol == "pooled":
        return task.new_meter()
    return task.spec.protocol_meter(task, protocol, batch_size)


#: metrics (by name) each protocol reports in percent (0-100); every other metric is in its own unit
#: (fractions 0-1 for mIoU, pixel accuracy and, under the MTAN protocols, within-t)
PERCENT_METRICS = {
    "pooled": frozenset({"within_11.25", "within_22.5", "within_30", "accuracy"}),
    "mtan_official": frozenset({"accuracy"}),
    "mtan_paper": frozenset({"accuracy"}),
}


def in_percent(protocol: str, metric: str) -> bool:
    """True when ``protocol`` reports ``metric`` (a name such as ``within_30``) in percent."""
    return metric in PERCENT_METRICS[check_protocol(protocol)]
