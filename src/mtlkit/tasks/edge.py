"""Edge detection: class-balanced BCE and the ODS F-measure with a pixel tolerance.

Target: int64 (H, W) of 0/1 edge labels, ``ignore_index`` left out. The head outputs one channel
of logits; the prediction is its sigmoid. The loss is the class-balanced BCE of HED as used in
multi-task PASCAL-Context / NYUD work: the positive term is weighted by ``w`` and the negative
term by ``1 - w``, with ``w`` the fraction of non-edge pixels among the batch's valid pixels (or
the fixed ``pos_weight`` option, e.g. 0.95), averaged over valid pixels. Metric: ``ods_f``
(:mod:`mtlkit.metrics.edge`; option ``tolerance``, a fraction of the image diagonal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import TASK_KINDS
from mtlkit.tasks.base import Task, TaskKind, draw_labels, label_map, loss_precision, valid_mean
from mtlkit.tasks.binary import binary_from_file, check_label_options

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mtlkit.metrics.base import Meter

EDGE_METRICS = {"ods_f": True}


def balanced_bce(pred: Tensor, target: Tensor, ignore_index: int = -1, pos_weight: float | None = None) -> Tensor:
    """Class-balanced BCE-with-logits: ``w`` on edge pixels, ``1 - w`` on the rest, mean over valid pixels."""
    logits = loss_precision(pred).reshape(target.shape)
    valid = target != ignore_index
    y = (target == 1) & valid
    if pos_weight is None:
        w = (valid & ~y).sum().to(logits.dtype) / valid.sum().clamp(min=1).to(logits.dtype)
    else:
        w = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    pos_term = F.softplus(-logits)  # -log sigmoid(x)
    neg_term = F.softplus(logits)  # -log (1 - sigmoid(x))
    per_pixel = torch.where(y, w * pos_term, (1 - w) * neg_term)
    return valid_mean(per_pixel, valid)


@TASK_KINDS.register("edge")
class Edge(TaskKind):
    """Edge / boundary detection per pixel."""

    name = "edge"
    metrics = EDGE_METRICS
    main_metric = "ods_f"
    metric_labels = {"ods_f": "ODS F"}
    fixed_channels = 1
    defaults = {"ignore_index": -1, "pos_weight": None, "tolerance": 0.0075}

    def check_options(self, name: str, options: Mapping[str, Any], channels: int) -> None:
        check_label_options(self, name, options, channels)
        pw, tol = options.get("pos_weight"), options.get("tolerance", 0.0075)
        if pw is not None and not 0 < pw < 1:
            raise ConfigError(f"task {name!r}: pos_weight of an edge task is the positive share, in (0, 1)")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ConfigError(f"task {name!r}: tolerance must be a fraction of the image diagonal in [0, 1)")

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return balanced_bce(pred, target, task.option("ignore_index"), task.option("pos_weight"))

    def postprocess(self, task: Task, pred: Tensor) -> Tensor:
        return torch.sigmoid(pred)

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics.edge import EdgeMeter

        return EdgeMeter(task.option("ignore_index"), float(task.option("tolerance")))

    def unlabelled(self, task: Task, hw: tuple[int, int]) -> Tensor:
        """Every pixel ``ignore_index``."""
        return torch.full(hw, int(task.option("ignore_index")), dtype=torch.int64)

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """The ``ignore_index`` pixels."""
        return target == task.option("ignore_index")

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        return label_map(target, task, "edge map", task.option("ignore_index"), 2)

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        return binary_from_file(task, array)

    def display(self, task: Task, pred: Tensor) -> Tensor:
        return pred.reshape(pred.shape[-2:])

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        a = np.asarray(array).squeeze()
        if a.dtype.kind == "f":
            ax.imshow(a, cmap="gray_r", vmin=0, vmax=1)
        else:
            draw_labels(ax, a, 2, task.option("ignore_index"))


def edge_task(name: str = "edge", **options: Any) -> Task:
    """An edge detection task (one logit channel)."""
    return Edge().make(name, **options)
