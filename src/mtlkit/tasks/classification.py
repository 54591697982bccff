"""Image classification (Visual Decathlon domains): cross-entropy, accuracy in percent.

Target: an int64 class id per image; the head outputs (N, C) logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from mtlkit.registry import TASK_KINDS
from mtlkit.tasks.base import Task, TaskKind, labels_from_file, loss_precision

if TYPE_CHECKING:
    from mtlkit.metrics.base import Meter

CLASSIFICATION_METRICS = {"accuracy": True}


def classification_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of (N, C) logits against class ids."""
    return F.cross_entropy(loss_precision(pred), target.long())


@TASK_KINDS.register("classification")
class Classification(TaskKind):
    """One class per image."""

    name = "classification"
    dense = False
    metrics = CLASSIFICATION_METRICS
    main_metric = "accuracy"
    metric_labels = {"accuracy": "Acc"}

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        return classification_loss(pred, target)

    def new_meter(self, task: Task) -> Meter:
        from mtlkit.metrics import AccuracyMeter

        return AccuracyMeter()

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        value = np.asarray(target)
        if value.size != 1 or value.dtype.kind not in "iu":
            return f"class must be one integer, got {value.dtype} of shape {tuple(value.shape)}"
        if not 0 <= int(value.reshape(())) < task.channels:
            return f"class {int(value.reshape(()))} outside [0, {task.channels})"
        return None

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        return labels_from_file(np.asarray(array).reshape(())).reshape(())

    def display(self, task: Task, pred: Tensor) -> Tensor:
        return pred.argmax(dim=0)

    def table_label(self, task: Task) -> str:
        return f"{task.name} ({task.channels} classes)"


def classification_task(name: str, num_classes: int) -> Task:
    """A classification task of ``num_classes`` classes."""
    return Classification().make(name, num_classes)
