"""Semantic segmentation: per-pixel classes, cross-entropy, mean IoU and pixel accuracy.

Target: int64 (H, W) class ids, ``ignore_index`` (default -1) for unlabelled pixels. Options:
``ignore_index``; ``class_names`` (one per class) adds each class's IoU (``iou_<name>``) to the
logged metrics. The meter also logs FCN's mean class accuracy (``macc``) and frequency-weighted IoU
(``fwiou``), the cross-stitch paper's other two columns (:mod:`mtlkit.metrics.segmentation`); they are
``reported_metrics``, not ``metrics``: best-epoch selection and Δm stay on mIoU and pixel accuracy,
as before they existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
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

SEGMENTATION_METRICS = {"miou": True, "pix_acc": True}
#: logged beside SEGMENTATION_METRICS (FCN Sec. 5), not used for model selection or Δm
SEGMENTATION_REPORTED = {"macc": True, "fwiou": True}


def segmentation_loss(pred: Tensor, target: Tensor, ignore_index: int = -1) -> Tensor:
    """Pixel-wise cross-entropy, ``ignore_index`` left out; 0 on an image with no labelled pixel."""
    target = target.long()
    valid = target != ignore_index
    ce = F.cross_entropy(loss_precision(pred), target.masked_fill(~valid, 0), reduction="none")
    return valid_mean(ce, valid)


@TASK_KINDS.register("segmentation")
class Segmentation(TaskKind):
    """Per-pixel classification into ``channels`` classes (MTAN's 13-class NYUv2 task)."""

    name = "segmentation"
    metrics = SEGMENTATION_METRICS
    main_metric = "miou"
    reported_metrics = SEGMENTATION_REPORTED
    metric_labels = {"miou": "mIoU", "pix_acc": "Pix Acc", "macc": "Mean Acc", "fwiou": "fwIoU"}
    column_label = "Segmentation"
    npy_dir = "label"
    npy_labels = True
    defaults = {"ignore_index": -1, "class_names": None}

    def check_options(self, name: str, options: Mapping[str, Any], channels: int) -> None:
        super().check_options(name, options, channels)
        names = options.get("class_names")
        if names is not None and (not isinstance(names, (list, tuple)) or len(names) != channels):
            raise ConfigError(f"task {name!r}: class_names must be a list of {channels} names (got {names!r})")
        if not isinstance(options.get("ignore_index", -1), int):
            raise ConfigError(f"task {name!r}: ignore_index must be an integer")

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return segmentation_loss(pred, target, task.option("ignore_index"))

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics import SegmentationMeter

        names = task.option("class_names") or ()
        return SegmentationMeter(task.channels, task.option("ignore_index"), class_names=[str(n) for n in names])

    def unlabelled(self, task: Task, hw: tuple[int, int]) -> Tensor:
        """Every pixel ``ignore_index``."""
        return torch.full(hw, int(task.option("ignore_index")), dtype=torch.int64)

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """The ``ignore_index`` pixels."""
        return target == task.option("ignore_index")

    def class_counts(self, task: Task, target: Tensor) -> np.ndarray:
        """Pixels of each class in the label map (``ignore_index`` pixels left out)."""
        labels = target.reshape(-1).long()
        labels = labels[labels != task.option("ignore_index")]
        return torch.bincount(labels.cpu(), minlength=task.channels).numpy().astype(np.int64)

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        return label_map(target, task, "label map", task.option("ignore_index"), task.channels)

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        return labels_from_file(array)

    def read_npy(
        self,
        task: Task,
        path: Path,
        hw: tuple[int, int] | None,
        *,
        label_map: np.ndarray | None = None,
        normal_tol: float | None = None,
    ) -> Tensor:
        """An (H, W) int64 label map; stored ids are checked against ``len(label_map)`` when one maps them."""
        from mtlkit.data.npy import read_label

        stored = task.channels if label_map is None else len(label_map)
        label = read_label(path, stored, hw)
        if label_map is not None:
            label = np.where(label >= 0, label_map[label.clip(min=0)], -1)
        return torch.from_numpy(np.ascontiguousarray(label))

    def protocol_meter(self, task: Task, protocol: str, batch_size: int) -> Meter:
        """``mtan_paper``: per-image mIoU and pixel accuracy averaged over images; else the pooled meter."""
        from mtlkit.metrics.protocols import PerImageSegmentationMeter

        return PerImageSegmentationMeter(task.channels) if protocol == "mtan_paper" else self.new_meter(task)

    def display(self, task: Task, pred: Tensor) -> Tensor:
        return pred.argmax(dim=0)

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        draw_labels(ax, array, task.channels, task.option("ignore_index"))

    def table_label(self, task: Task) -> str:
        return f"{task.name} ({task.channels} classes)"


def segmentation_task(num_classes: int, name: str = "segmentation", **options: Any) -> Task:
    """A segmentation task of ``num_classes`` classes."""
    return Segmentation().make(name, num_classes, **options)
