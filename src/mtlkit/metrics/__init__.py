"""Evaluation metrics over whole sets: one-shot functions, streaming meters, and Delta_m.

Functions take NumPy arrays or torch tensors. Meters (``update`` per batch, ``all_reduce`` across
torch.distributed ranks, ``compute``) give exactly what the function gives on the concatenated
data: state is int64 counts and float64 sums, never a mean of per-batch values. No valid
pixel/sample at all gives NaN values.
"""

from mtlkit.metrics.base import Meter, MetricError
from mtlkit.metrics.classification import AccuracyMeter, accuracy
from mtlkit.metrics.delta import delta_m, metric_directions
from mtlkit.metrics.depth import DepthMeter, depth_metrics
from mtlkit.metrics.normal import NormalMeter, angular_errors, normal_metrics
from mtlkit.metrics.segmentation import (
    SegmentationMeter,
    confusion_matrix,
    metrics_from_confusion,
    per_class_accuracy,
    per_class_iou,
    segmentation_metrics,
)

__all__ = [
    "AccuracyMeter",
    "DepthMeter",
    "Meter",
    "MetricError",
    "NormalMeter",
    "SegmentationMeter",
    "accuracy",
    "angular_errors",
    "confusion_matrix",
    "delta_m",
    "depth_metrics",
    "metric_directions",
    "metrics_from_confusion",
    "normal_metrics",
    "per_class_accuracy",
    "per_class_iou",
    "segmentation_metrics",
]
