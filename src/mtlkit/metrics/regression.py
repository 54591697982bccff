"""Dense regression of any number of channels: mean absolute error and root mean squared error.

Every element (pixel x channel) whose target is not the invalid value counts once, over the
whole set; float64 sums. ``invalid_value`` None: every finite element counts; NaN: NaN marks
invalid elements.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, sum_across_ranks


def valid_elements(target: Tensor, invalid_value: float | None) -> Tensor:
    """Boolean mask of the target elements that carry a value."""
    if invalid_value is None:
        return torch.isfinite(target)
    if isinstance(invalid_value, float) and math.isnan(invalid_value):
        return ~torch.isnan(target)
    return target != invalid_value


def _sums(pred: Tensor, target: Tensor, invalid_value: float | None) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise MetricError(f"regression: pred shape {tuple(pred.shape)} differs from target {tuple(target.shape)}")
    t = target.to(device=pred.device, dtype=torch.float64)
    valid = valid_elements(t, invalid_value)
    err = pred.to(torch.float64)[valid] - t[valid]
    return torch.stack([err.abs().sum(), (err * err).sum()]), valid.sum().to(torch.int64).reshape(1)


def _result(sums: Tensor, count: Tensor) -> dict[str, float]:
    n = int(count.item())
    if n == 0:
        return {"mae": math.nan, "rmse": math.nan}
    s = sums.cpu().tolist()
    return {"mae": s[0] / n, "rmse": math.sqrt(s[1] / n)}


def regression_metrics(pred: ArrayLike, target: ArrayLike, invalid_value: float | None = None) -> dict[str, float]:
    """``{"mae", "rmse"}`` over the valid elements of the whole set."""
    return _result(*_sums(as_tensor(pred, "pred"), as_tensor(target, "target"), invalid_value))


class RegressionMeter(Meter):
    """Streaming float64 sums of |e| and e^2 and an int64 element count -> mae, rmse."""

    def __init__(self, invalid_value: float | None = None) -> None:
        self.invalid_value = invalid_value
        super().__init__()

    def _reset_state(self) -> None:
        self._sums = torch.zeros(2, dtype=torch.float64)
        self._count = torch.zeros(1, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        sums, count = _sums(pred, target, self.invalid_value)
        self._sums = self._sums.to(sums.device) + sums
        self._count = self._count.to(count.device) + count

    def _all_reduce(self) -> None:
        self._sums = sum_across_ranks(self._sums)
        self._count = sum_across_ranks(self._count)

    def compute(self) -> dict[str, float]:
        return _result(self._sums, self._count)
