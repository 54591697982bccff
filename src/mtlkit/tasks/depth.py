"""Depth: one channel of metric depth, masked L1 loss, absolute and relative error.

Target: float32 (1, H, W), 0 = missing. Zooming into the scene by ``s`` divides depth by ``s``;
option ``inverse`` (inverse depth / disparity, as CityScapes ships it) multiplies instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.registry import TASK_KINDS
from mtlkit.tasks.base import Task, TaskKind, float_maps_from_file, loss_precision, valid_mean

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mtlkit.metrics.base import Meter

DEPTH_METRICS = {"abs_err": False, "rel_err": False}


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over pixels with a depth (target != 0), as in MTAN."""
    valid = (target != 0).to(pred.dtype)
    return valid_mean((loss_precision(pred) - target).abs(), valid)


@TASK_KINDS.register("depth")
class Depth(TaskKind):
    """Per-pixel depth regression (0 marks a pixel without depth)."""

    name = "depth"
    metrics = DEPTH_METRICS
    main_metric = "abs_err"
    metric_labels = {"abs_err": "Abs Err", "rel_err": "Rel Err"}
    fixed_channels = 1
    column_label = "Depth"
    npy_dir = "depth"
    defaults = {"inverse": False}

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return depth_loss(pred, target)

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics import DepthMeter

        return DepthMeter()

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """The pixels of depth 0 (no measurement)."""
        return (target == 0).all(dim=0)

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        if target.ndim == 2:
            target = target[None]
        if target.ndim != 3 or target.shape[0] != 1:
            return f"depth must be (1, H, W) or (H, W), got shape {tuple(target.shape)}"
        if not np.isfinite(target).all():
            return "depth holds NaN/inf"
        if (target < 0).any():
            return "depth holds negative values"
        return None

    def zoom(self, task: Task, target: Tensor, scale: float) -> Tensor:
        return target * scale if task.option("inverse") else target / scale

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        return float_maps_from_file(array, 1)

    def read_npy(
        self,
        task: Task,
        path: Path,
        hw: tuple[int, int] | None,
        *,
        label_map: np.ndarray | None = None,
        normal_tol: float | None = None,
    ) -> Tensor:
        """A (1, H, W) float32 depth map from an (H, W, 1) or (H, W) file."""
        from mtlkit.data.npy import read_depth

        return torch.from_numpy(np.ascontiguousarray(read_depth(path, hw).transpose(2, 0, 1)))

    def protocol_meter(self, task: Task, protocol: str, batch_size: int) -> Meter:
        """The MTAN protocols: abs/rel error means over chunks of ``batch_size`` images."""
        from mtlkit.metrics.protocols import ChunkMeanMeter, chunk_depth_metrics

        return ChunkMeanMeter(chunk_depth_metrics, ("abs_err", "rel_err"), batch_size)

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        d = np.asarray(array, dtype=float).squeeze()
        ax.imshow(np.ma.masked_equal(d, 0.0), cmap="magma_r")
        ax.set_facecolor("black")


def depth_task(name: str = "depth", **options: Any) -> Task:
    """A depth task (one channel)."""
    return Depth().make(name, **options)
