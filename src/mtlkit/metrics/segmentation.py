"""Semantic segmentation: the four metrics of Long et al. (FCN, CVPR 2015, Sec. 5) from a confusion
matrix over the whole set, as the cross-stitch paper (Misra et al., CVPR 2016) reports them.

With ``n_ij`` the pixels of true class i predicted as j, ``t_i = sum_j n_ij`` and ``n_cl`` classes:

- ``pix_acc`` = sum_i n_ii / sum_i t_i
- ``macc`` (mean class accuracy) = (1/n_cl) sum_i n_ii / t_i
- ``miou`` (mean IU) = (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
- ``fwiou`` (frequency-weighted IU) = (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Conventions: rows of the confusion matrix are the true class, columns the predicted class.
Pixels whose target equals ``ignore_index`` are left out everywhere. Classes the formulas cannot
score are left out of the means (``n_cl`` counts the others), as FCN's own scoring code does: a
class absent from both the prediction and the target (its union is 0) is left out of the mean IoU,
and a class absent from the target (``t_i = 0``) out of the mean class accuracy; a class predicted
but absent from the target has IoU 0 and counts in ``miou``. In ``fwiou`` a class absent from the
target has weight ``t_i = 0``, so nothing is left out. All four are fractions in [0, 1]; with no
valid pixel at all they are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, integer_labels, sum_across_ranks


def _valid_pairs(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Flat (predicted id, true label) of the non-ignored pixels, after checking every value."""
    if num_classes < 1:
        raise MetricError(f"segmentation: num_classes must be >= 1, got {num_classes}")
    target = integer_labels(target, "segmentation target").to(pred.device)
    if pred.ndim == target.ndim + 1:
        if pred.shape[1] != num_classes:
            raise MetricError(
                f"segmentation: logits have {pred.shape[1]} channels on dim 1, expected num_classes={num_classes}"
            )
        if pred.shape[:1] + pred.shape[2:] != target.shape:
            raise MetricError(
                f"segmentation: logits shape {tuple(pred.shape)} does not match target {tuple(target.shape)}"
            )
        pred = pred.argmax(dim=1)
    elif pred.shape == target.shape:
        if pred.is_floating_point():
            raise MetricError("segmentation: pred is shaped like target has floats; pass class ids or (N,C,...) logits")
        pred = integer_labels(pred, "segmentation pred")
    else:
        raise MetricError(
            f"segmentation: pred shape {tuple(pred.shape)} fits neither target {tuple(target.shape)} "
            "(class ids) nor (N,C,...) logits"
        )
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = target[bad]
        raise MetricError(
            f"segmentation target holds label {int(values[0])} outside [0, {num_classes}) and not "
            f"ignore_index={ignore_index} ({values.numel()} pixel(s), labels {values.unique()[:10].tolist()})"
        )
    p, t = pred[valid], target[valid]
    bad_p = (p < 0) | (p >= num_classes)
    if bool(bad_p.any()):
        raise MetricError(f"segmentation prediction holds class id {int(p[bad_p][0])} outside [0, {num_classes})")
    return p, t


def _confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """(C, C) int64 confusion matrix on the inputs' device (rows: truth, columns: prediction)."""
    p, t = _valid_pairs(pred, target, num_classes, ignore_index)
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class, ignored pixels left out.

    ``pred`` is class ids shaped like ``target`` or logits (N, C, ...) reduced by argmax over dim 1.
    Labels outside [0, C) other than ``ignore_index`` raise MetricError (a ValueError).
    """
    cm = _confusion(as_tensor(pred, "pred"), as_tensor(target, "target"), num_classes, ignore_index)
    return cm.cpu().numpy()


def per_class_iou(cm: ArrayLike) -> np.ndarray:
    """IoU of each class from a confusion matrix; NaN for a class absent from truth and prediction."""
    c = as_tensor(cm, "confusion matrix").to(torch.float64).cpu()
    tp = torch.diagonal(c)
    union = c.sum(dim=0) + c.sum(dim=1) - tp
    iou = torch.full_like(tp, math.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    return iou.numpy()


def per_class_accuracy(cm: ArrayLike) -> np.ndarray:
    """Recall of each class, ``n_ii / t_i``, from a confusion matrix; NaN for a class absent from the truth."""
    c = as_tensor(cm, "confusion matrix").to(torch.float64).cpu()
    tp = torch.diagonal(c)
    truth = c.sum(dim=1)
    acc = torch.full_like(tp, math.nan)
    present = truth > 0
    acc[present] = tp[present] / truth[present]
    return acc.numpy()


def metrics_from_confusion(cm: ArrayLike) -> dict[str, float]:
    """``{"miou", "pix_acc", "macc", "fwiou"}`` from a confusion matrix (see the module docstring for
    the formulas and how absent classes are left out; NaN if the matrix is empty)."""
    iou = per_class_iou(cm)
    acc = per_class_accuracy(cm)
    present = ~np.isnan(iou)
    c = as_tensor(cm, "confusion matrix").to(torch.float64).cpu()
    total = float(c.sum())
    miou = float(iou[present].mean()) if present.any() else math.nan
    pix_acc = float(torch.diagonal(c).sum()) / total if total > 0 else math.nan
    in_truth = ~np.isnan(acc)  # t_i > 0, hence also union > 0
    macc = float(acc[in_truth].mean()) if in_truth.any() else math.nan
    freq = c.sum(dim=1).numpy()
    fwiou = float((freq[in_truth] * iou[in_truth]).sum()) / total if total > 0 else math.nan
    return {"miou": miou, "pix_acc": pix_acc, "macc": macc, "fwiou": fwiou}


def segmentation_metrics(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = -1
) -> dict[str, float]:
    """Mean IoU, pixel accuracy, mean class accuracy and f.w. IoU over the whole given set (one confusion
    matrix, not per image).

    ``pred``: class ids (N, H, W) or logits (N, C, H, W); ``target``: (N, H, W) labels with
    ``ignore_index`` for unlabelled pixels. NumPy arrays and tensors are both accepted.
    """
    return metrics_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


class SegmentationMeter(Meter):
    """Streaming confusion matrix (int64, kept on the device of the updates) -> miou, pix_acc, macc, fwiou.

    With ``class_names``, also each named class's IoU (``iou_<name>``, in class-id order).
    """

    def __init__(self, num_classes: int, ignore_index: int = -1, *, class_names: Sequence[str] = ()) -> None:
        if num_classes < 1:
            raise MetricError(f"SegmentationMeter: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = [str(n) for n in class_names]
        super().__init__()

    def _reset_state(self) -> None:
        self._cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        cm = _confusion(pred, target, self.num_classes, self.ignore_index)
        self._cm = self._cm.to(cm.device) + cm

    def _all_reduce(self) -> None:
        self._cm = sum_across_ranks(self._cm)

    @property
    def confusion_matrix(self) -> np.ndarray:
        """The accumulated (C, C) int64 counts, rows = true class, columns = predicted class."""
        return self._cm.cpu().numpy().copy()

    def compute(self) -> dict[str, float]:
        """``{"miou", "pix_acc", "macc", "fwiou"}`` (and ``iou_<name>``) over every update (and every rank
        after all_reduce)."""
        out = metrics_from_confusion(self._cm.cpu())
        if self.class_names:
            for name, iou in zip(self.class_names, per_class_iou(self.confusion_matrix)):
                out[f"iou_{name}"] = float(iou)
        return out
