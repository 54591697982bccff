"""Binary per-pixel masks (saliency, foreground): sigmoid + BCE, IoU at 0.5 and max F-measure.

Target: int64 (H, W) of 0/1, ``ignore_index`` (default -1; e.g. 255 for PNG masks) left out. The
head outputs one channel of logits; the prediction is its sigmoid. Options: ``ignore_index``;
``pos_weight`` multiplies the positive term of the BCE (``None``: 1). PNG masks of 0/255 are read
as 0/1 unless 255 is the ignore value.
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
from mtlkit.tasks.base import Task, TaskKind, draw_labels, label_map, labels_from_file, loss_precision, valid_mean

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mtlkit.metrics.base import Meter

BINARY_METRICS = {"iou": True, "max_f": True}


def binary_loss(pred: Tensor, target: Tensor, ignore_index: int = -1, pos_weight: float | None = None) -> Tensor:
    """Mean BCE-with-logits over the non-ignored pixels; ``pred`` (N, 1, H, W), ``target`` (N, H, W)."""
    logits = loss_precision(pred).reshape(target.shape)
    valid = target != ignore_index
    y = (target == 1).to(logits.dtype)
    weight = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none", pos_weight=weight)
    return valid_mean(bce, valid)


def check_label_options(kind: TaskKind, name: str, options: Mapping[str, Any], channels: int) -> None:
    """Shared checks of ``ignore_index`` / ``pos_weight`` for 0/1 label kinds."""
    TaskKind.check_options(kind, name, options, channels)
    if not isinstance(options.get("ignore_index", -1), int) or options.get("ignore_index", -1) in (0, 1):
        raise ConfigError(f"task {name!r}: ignore_index must be an integer other than 0 and 1")
    pw = options.get("pos_weight")
    if pw is not None and (isinstance(pw, bool) or not isinstance(pw, (int, float)) or pw <= 0):
        raise ConfigError(f"task {name!r}: pos_weight must be a positive number (got {pw!r})")


def binary_from_file(task: Task, array: np.ndarray) -> Tensor:
    """0/1 labels from a mask file; 0/255 masks become 0/1 unless 255 is the ignore value."""
    labels = labels_from_file(array)
    if task.option("ignore_index") != 255:
        labels = torch.where(labels == 255, torch.ones_like(labels), labels)
    return labels


@TASK_KINDS.register("binary")
class Binary(TaskKind):
    """Foreground/background per pixel."""

    name = "binary"
    metrics = BINARY_METRICS
    main_metric = "iou"
    metric_labels = {"iou": "IoU", "max_f": "max F"}
    fixed_channels = 1
    defaults = {"ignore_index": -1, "pos_weight": None}

    def check_options(self, name: str, options: Mapping[str, Any], channels: int) -> None:
        check_label_options(self, name, options, channels)

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return binary_loss(pred, target, task.option("ignore_index"), task.option("pos_weight"))

    def postprocess(self, task: Task, pred: Tensor) -> Tensor:
        return torch.sigmoid(pred)

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics.binary import BinaryMeter

        return BinaryMeter(task.option("ignore_index"))

    def unlabelled(self, task: Task, hw: tuple[int, int]) -> Tensor:
        """Every pixel ``ignore_index``."""
        return torch.full(hw, int(task.option("ignore_index")), dtype=torch.int64)

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """The ``ignore_index`` pixels."""
        return target == task.option("ignore_index")

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        return label_map(target, task, "mask", task.option("ignore_index"), 2)

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        return binary_from_file(task, array)

    def display(self, task: Task, pred: Tensor) -> Tensor:
        return pred.reshape(pred.shape[-2:])

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        a = np.asarray(array).squeeze()
        if a.dtype.kind == "f":  # a probability map
            ax.imshow(a, cmap="gray", vmin=0, vmax=1)
        else:
            draw_labels(ax, a, 2, task.option("ignore_index"))


def binary_task(name: str = "mask", **options: Any) -> Task:
    """A binary mask task (one logit channel)."""
    return Binary().make(name, **options)
