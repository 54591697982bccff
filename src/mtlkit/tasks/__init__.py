"""Task declarations and task kinds: the one place that says what a task predicts, how it is trained and scored.

A dataset returns its list of :class:`Task`; models size their heads from it, the trainer takes
losses and metrics from it, augmentation and reports ask it how to move and draw its targets.
Each kind is one module registering a :class:`TaskKind` in ``TASK_KINDS``; adding one is a file
plus an import line below.
"""

from mtlkit.registry import TASK_KINDS
from mtlkit.tasks import binary, classification, depth, edge, normal, regression, segmentation  # noqa: F401
from mtlkit.tasks.base import Task, TaskKind, kind_of, make_task, stack_losses, valid_mean
from mtlkit.tasks.binary import BINARY_METRICS, binary_loss, binary_task
from mtlkit.tasks.classification import CLASSIFICATION_METRICS, classification_loss, classification_task
from mtlkit.tasks.depth import DEPTH_METRICS, depth_loss, depth_task
from mtlkit.tasks.edge import EDGE_METRICS, balanced_bce, edge_task
from mtlkit.tasks.normal import NORMAL_METRICS, normal_loss, normal_task
from mtlkit.tasks.regression import REGRESSION_METRICS, regression_loss, regression_task
from mtlkit.tasks.segmentation import SEGMENTATION_METRICS, segmentation_loss, segmentation_task

__all__ = [
    "BINARY_METRICS",
    "CLASSIFICATION_METRICS",
    "DEPTH_METRICS",
    "EDGE_METRICS",
    "NORMAL_METRICS",
    "REGRESSION_METRICS",
    "SEGMENTATION_METRICS",
    "TASK_KINDS",
    "Task",
    "TaskKind",
    "balanced_bce",
    "binary_loss",
    "binary_task",
    "classification_loss",
    "classification_task",
    "depth_loss",
    "depth_task",
    "edge_task",
    "kind_of",
    "make_task",
    "normal_loss",
    "normal_task",
    "regression_loss",
    "regression_task",
    "segmentation_loss",
    "segmentation_task",
    "stack_losses",
    "valid_mean",
]
