"""Dense regression of any number of channels: per-element L1 or L2, MAE and RMSE.

Target: float32 (C, H, W). Options: ``loss`` ("l1" or "l2"); ``invalid_value`` marks elements
without a target (a number, NaN, or None = every finite element counts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import TASK_KINDS
from mtlkit.tasks.base import Task, TaskKind, float_maps_from_file, loss_precision, valid_mean

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mtlkit.metrics.base import Meter

REGRESSION_METRICS = {"mae": False, "rmse": False}


def regression_loss(pred: Tensor, target: Tensor, invalid_value: float | None = None, loss: str = "l1") -> Tensor:
    """Mean |pred - target| (l1) or (pred - target)^2 (l2) over the valid target elements."""
    from mtlkit.metrics.regression import valid_elements

    valid = valid_elements(target, invalid_value)
    diff = loss_precision(pred) - target.masked_fill(~valid, 0)
    err = diff.abs() if loss == "l1" else diff * diff
    return valid_mean(err.masked_fill(~valid, 0), valid)


def _invalid(task: Task) -> float | None:
    value = task.option("invalid_value")
    return None if value is None else float(value)


@TASK_KINDS.register("regression")
class Regression(TaskKind):
    """Per-pixel real values (any number of channels)."""

    name = "regression"
    metrics = REGRESSION_METRICS
    main_metric = "mae"
    metric_labels = {"mae": "MAE", "rmse": "RMSE"}
    defaults = {"loss": "l1", "invalid_value": None}

    def check_options(self, name: str, options: Mapping[str, Any], channels: int) -> None:
        super().check_options(name, options, channels)
        if options.get("loss", "l1") not in ("l1", "l2"):
            raise ConfigError(f"task {name!r}: loss must be l1 or l2 (got {options.get('loss')!r})")
        value = options.get("invalid_value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"task {name!r}: invalid_value must be a number, .nan or null (got {value!r})")

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return regression_loss(pred, target, _invalid(task), task.option("loss"))

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics.regression import RegressionMeter

        return RegressionMeter(_invalid(task))

    def unlabelled(self, task: Task, hw: tuple[int, int]) -> Tensor:
        """Every element the task's ``invalid_value`` (NaN without one)."""
        value = _invalid(task)
        return torch.full((task.channels, *hw), float("nan") if value is None else value, dtype=torch.float32)

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """The pixels every channel of which holds the task's ``invalid_value`` (or NaN/inf without one)."""
        from mtlkit.metrics.regression import valid_elements

        return ~valid_elements(target, _invalid(task)).any(dim=0)

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        a = target[None] if target.ndim == 2 else target
        if a.ndim != 3 or a.shape[0] != task.channels:
            return f"target must be ({task.channels}, H, W), got shape {tuple(target.shape)}"
        invalid = _invalid(task)
        values = a.astype(np.float64)
        if invalid is not None and not math.isnan(invalid):
            values = values[values != invalid]
        elif invalid is not None:
            values = values[~np.isnan(values)]
        if not np.isfinite(values).all():
            return "target holds NaN/inf (set the task's invalid_value to mark missing values)"
        return None

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        return float_maps_from_file(array, task.channels)

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        a = np.asarray(array, dtype=float)
        a = a[0] if a.ndim == 3 else a
        ax.imshow(np.ma.masked_invalid(a), cmap="viridis")


def regression_task(name: str, channels: int = 1, **options: Any) -> Task:
    """A dense regression task of ``channels`` channels."""
    return Regression().make(name, channels, **options)
