"""Surface normals: three channels of unit vectors, 1 - cosine loss, angular error statistics.

Target: float32 (3, H, W) unit vectors in camera coordinates (x right), all-zero = missing. A
horizontal flip negates x; zooming does not change normals. Files: ``.npy`` values as they are,
``.png`` as RGB = (n + 1) / 2 * 255 (black = missing), renormalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.registry import TASK_KINDS
from mtlkit.tasks.base import Task, TaskKind, float_maps_from_file, loss_precision, valid_mean

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mtlkit.metrics.base import Meter

NORMAL_METRICS = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - mean cosine between the normalised prediction and the target, over valid pixels."""
    pred = F.normalize(loss_precision(pred), p=2, dim=1)
    valid = (target.abs().sum(dim=1) != 0).to(pred.dtype)
    cos = (pred * target).sum(dim=1)
    return 1 - valid_mean(cos, valid)


@TASK_KINDS.register("normal")
class Normal(TaskKind):
    """Per-pixel surface normal estimation."""

    name = "normal"
    metrics = NORMAL_METRICS
    main_metric = "mean"
    metric_labels = {
        "mean": "Mean",
        "median": "Median",
        "within_11.25": "11.25°",
        "within_22.5": "22.5°",
        "within_30": "30°",
    }
    fixed_channels = 3
    column_label = "Surface Normal"
    npy_dir = "normal"

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return normal_loss(pred, target)

    def postprocess(self, task: Task, pred: Tensor) -> Tensor:
        return F.normalize(pred, p=2, dim=1)

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics import NormalMeter

        return NormalMeter()

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """The pixels whose normal is the zero vector (no measurement)."""
        return (target == 0).all(dim=0)

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        if target.ndim != 3 or target.shape[0] != 3:
            return f"normals must be (3, H, W), got shape {tuple(target.shape)}"
        if not np.isfinite(target).all():
            return "normals hold NaN/inf"
        norm = np.sqrt((target.astype(np.float64) ** 2).sum(axis=0))
        valid = norm > 0
        if valid.any() and np.abs(norm[valid] - 1).max() > 1e-2:
            return "normals are not unit vectors (|n| differs from 1 by more than 0.01 where not 0)"
        return None

    def flip(self, task: Task, target: Tensor) -> Tensor:
        flipped = torch.flip(target, dims=[-1]).clone()
        flipped[0] = torch.where(flipped[0] != 0, -flipped[0], flipped[0])
        return flipped.contiguous()

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        if array.dtype == np.uint8:
            a = np.moveaxis(array[..., :3], -1, 0).astype(np.float32)
            missing = (a == 0).all(axis=0)
            n = a / 127.5 - 1.0
            n /= np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-12)
            n[:, missing] = 0.0
            return torch.from_numpy(np.ascontiguousarray(n, dtype=np.float32))
        return float_maps_from_file(array, 3)

    def read_npy(
        self,
        task: Task,
        path: Path,
        hw: tuple[int, int] | None,
        *,
        label_map: np.ndarray | None = None,
        normal_tol: float | None = None,
    ) -> Tensor:
        """A (3, H, W) float32 normal map from an (H, W, 3) file (unit vectors within ``normal_tol``, or 0)."""
        from mtlkit.data.npy import read_normal

        normal = read_normal(path, hw) if normal_tol is None else read_normal(path, hw, normal_tol)
        return torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1)))

    def protocol_meter(self, task: Task, protocol: str, batch_size: int) -> Meter:
        """The MTAN protocols: angle statistics means over chunks of ``batch_size`` images."""
        from mtlkit.metrics.normal import KEYS
        from mtlkit.metrics.protocols import ChunkMeanMeter, chunk_normal_metrics

        return ChunkMeanMeter(chunk_normal_metrics, KEYS, batch_size)

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        n = np.asarray(array, dtype=float)
        n = np.moveaxis(n, 0, -1) if n.shape[0] == 3 else n
        ax.imshow(np.clip((n + 1) / 2, 0, 1))


def normal_task(name: str = "normal") -> Task:
    """A surface-normal task (three channels)."""
    return Normal().make(name)
