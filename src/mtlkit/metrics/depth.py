"""Depth: absolute and relative error over the pixels that have a ground-truth depth.

``abs_err`` = mean |pred - target| and ``rel_err`` = mean |pred - target| / target over every
pixel of the whole set whose target is not 0 (0 marks a missing depth; NaN targets are not treated
as missing). Both are NaN when no pixel has a depth. Sums run in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, sum_across_ranks


def _depth_sums(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(float64 [sum abs err, sum rel err], int64 [valid pixel count]) of one batch."""
    if pred.shape != target.shape:
        raise MetricError(f"depth: pred shape {tuple(pred.shape)} differs from target {tuple(target.shape)}")
    t = target.to(device=pred.device, dtype=torch.float64)
    valid = t != 0
    t = t[valid]
    err = (pred.to(torch.float64)[valid] - t).abs()
    sums = torch.stack([err.sum(), (err / t).sum()])
    return sums, valid.sum().to(torch.int64).reshape(1)


def _depth_result(sums: Tensor, count: Tensor) -> dict[str, float]:
    n = int(count.item())
    if n == 0:
        return {"abs_err": math.nan, "rel_err": math.nan}
    s = sums.cpu().tolist()
    return {"abs_err": s[0] / n, "rel_err": s[1] / n}


def depth_metrics(pred: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """``{"abs_err", "rel_err"}`` over all pixels with target != 0 (NumPy or torch, same shapes)."""
    sums, count = _depth_sums(as_tensor(pred, "pred"), as_tensor(target, "target"))
    return _depth_result(sums, count)


class DepthMeter(Meter):
    """Streaming float64 error sums and int64 valid-pixel count -> abs_err, rel_err."""

    def _reset_state(self) -> None:
        self._sums = torch.zeros(2, dtype=torch.float64)
        self._count = torch.zeros(1, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        sums, count = _depth_sums(pred, target)
        self._sums = self._sums.to(sums.device) + sums
        self._count = self._count.to(count.device) + count

    def _all_reduce(self) -> None:
        self._sums = sum_across_ranks(self._sums)
        self._count = sum_across_ranks(self._count)

    def compute(self) -> dict[str, float]:
        """``{"abs_err", "rel_err"}`` over every update (and every rank after all_reduce)."""
        return _depth_result(self._sums, self._count)
