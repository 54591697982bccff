"""Task declarations: the one place that says what a task predicts, how it is trained and scored.

A dataset returns its list of :class:`Task`; models size their heads from it, the trainer takes
losses and metrics from it, and reports read the better direction of every metric from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

SEGMENTATION_METRICS = {"miou": True, "pix_acc": True}
DEPTH_METRICS = {"abs_err": False, "rel_err": False}
NORMAL_METRICS = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}
CLASSIFICATION_METRICS = {"accuracy": True}


@dataclass(frozen=True)
class Task:
    """One prediction task.

    name: key of the target in a sample and of the prediction in a model's output dict.
    kind: "segmentation", "depth", "normal" or "classification" (selects loss and metrics).
    channels: output channels of the task's head (number of classes for segmentation).
    metrics: metric name -> True when higher is better.
    main_metric: the metric curves and the task-complexity plot show first.
    """

    name: str
    kind: str
    channels: int
    metrics: dict[str, bool] = field(hash=False)
    main_metric: str

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The task's training loss (MTAN's choices: CE, masked L1, masked 1 - cosine)."""
        return LOSSES[self.kind](pred, target)

    def postprocess(self, pred: Tensor) -> Tensor:
        """Map a head's raw output to a prediction (normals are L2-normalised)."""
        if self.kind == "normal":
            return F.normalize(pred, p=2, dim=1)
        return pred

    def new_meter(self):
        """A fresh streaming accumulator of this task's metrics over an evaluation set."""
        from mtlkit import metrics

        if self.kind == "segmentation":
            return metrics.SegmentationMeter(self.channels)
        if self.kind == "depth":
            return metrics.DepthMeter()
        if self.kind == "normal":
            return metrics.NormalMeter()
        if self.kind == "classification":
            return metrics.AccuracyMeter()
        raise ValueError(f"unknown task kind {self.kind!r}")


def segmentation_task(num_classes: int, name: str = "segmentation") -> Task:
    return Task(name, "segmentation", num_classes, dict(SEGMENTATION_METRICS), "miou")


def depth_task(name: str = "depth") -> Task:
    return Task(name, "depth", 1, dict(DEPTH_METRICS), "abs_err")


def normal_task(name: str = "normal") -> Task:
    return Task(name, "normal", 3, dict(NORMAL_METRICS), "mean")


def classification_task(name: str, num_classes: int) -> Task:
    return Task(name, "classification", num_classes, dict(CLASSIFICATION_METRICS), "accuracy")


def _valid_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; zero (with a graph) when nothing is valid."""
    n = mask.sum()
    return (values * mask).sum() / n.clamp(min=1)


def segmentation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy, label -1 ignored; 0 on an image with no labelled pixel."""
    target = target.long()
    valid = target != -1
    ce = F.cross_entropy(pred.float(), target.clamp(min=0), reduction="none")
    return _valid_mean(ce, valid)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over pixels with a depth (target != 0), as in MTAN."""
    valid = (target != 0).to(pred.dtype)
    return _valid_mean((pred.float() - target).abs(), valid)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - mean cosine between the normalised prediction and the target, over valid pixels."""
    pred = F.normalize(pred.float(), p=2, dim=1)
    valid = (target.abs().sum(dim=1) != 0).to(pred.dtype)
    cos = (pred * target).sum(dim=1)
    return 1 - _valid_mean(cos, valid)


def classification_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(pred.float(), target.long())


LOSSES = {
    "segmentation": segmentation_loss,
    "depth": depth_loss,
    "normal": normal_loss,
    "classification": classification_loss,
}


def stack_losses(tasks: list[Task], preds: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
    """The K task losses of one batch as a vector, in task order."""
    return torch.stack([t.loss(preds[t.name], batch[t.name]) for t in tasks])
