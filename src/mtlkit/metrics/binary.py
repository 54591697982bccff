"""Binary per-pixel masks (saliency, foreground): IoU of the positive class and max F-measure.

Inputs: ``prob`` (N, H, W) or (N, 1, H, W) foreground probabilities in [0, 1]; ``target`` the same
shape of 0/1 labels, ``ignore_index`` pixels left out.

* ``iou``: TP / (TP + FP + FN) of the positive class over the whole set, a pixel predicted
  positive when ``prob >= 0.5``.
* ``max_f``: the F-measure as saliency papers report it (beta^2 = 0.3): at each of the 256
  thresholds t = i / 255 an image's precision TP / (TP + FP) and recall TP / (TP + FN) (0 when
  the denominator is 0) are averaged over the images, F = (1 + b^2) P R / (b^2 P + R), and the
  best threshold's F is reported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, integer_labels, sum_across_ranks

BETA2 = 0.3
LEVELS = 256  # thresholds i / 255, i = 0..255


def _flat(prob: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """(N, P) probabilities, (N, P) 0/1 labels and (N, P) validity after shape and value checks."""
    if prob.ndim == 4 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if prob.ndim == 2 and target.ndim == 2:
        prob, target = prob[None], target[None]
    if prob.shape != target.shape:
        raise MetricError(f"binary: prediction shape {tuple(prob.shape)} differs from target {tuple(target.shape)}")
    target = integer_labels(target, "binary target").to(prob.device)
    valid = target != ignore_index
    if bool((valid & (target != 0) & (target != 1)).any()):
        raise MetricError(f"binary target holds values other than 0, 1 and ignore_index={ignore_index}")
    n = prob.shape[0]
    return prob.reshape(n, -1).to(torch.float64), target.reshape(n, -1), valid.reshape(n, -1)


def _counts(prob: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """int64 [TP, FP, FN] at 0.5, and float64 (2, LEVELS) sums over images of precision and recall."""
    pos_pred = (prob >= 0.5) & valid
    pos = (target == 1) & valid
    iou = torch.stack([(pos_pred & pos).sum(), (pos_pred & ~pos).sum(), (~pos_pred & pos & valid).sum()])
    n = prob.shape[0]
    # level of a pixel: the largest i with prob >= i / 255; a pixel counts as positive at every level <= it
    level = torch.floor(prob.clamp(0, 1) * (LEVELS - 1)).long()
    offset = torch.arange(n, device=prob.device)[:, None] * LEVELS
    hist_all = torch.bincount((level + offset)[valid], minlength=n * LEVELS).reshape(n, LEVELS)
    hist_tp = torch.bincount((level + offset)[pos], minlength=n * LEVELS).reshape(n, LEVELS)
    predicted = hist_all.flip(1).cumsum(1).flip(1).double()  # predicted positives at threshold i
    tp = hist_tp.flip(1).cumsum(1).flip(1).double()
    gt = pos.sum(dim=1, keepdim=True).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(gt > 0, tp / gt.clamp(min=1), torch.zeros_like(tp))
    return iou.to(torch.int64), torch.stack([precision.sum(0), recall.sum(0)])


def _result(iou: Tensor, pr: Tensor, images: int) -> dict[str, float]:
    tp, fp, fn = iou.cpu().tolist()
    out = {"iou": tp / (tp + fp + fn) if tp + fp + fn else math.nan}
    if images == 0:
        out["max_f"] = math.nan
        return out
    p, r = (pr.cpu() / images).unbind(0)
    denom = BETA2 * p + r
    f = torch.where(denom > 0, (1 + BETA2) * p * r / denom.clamp(min=1e-300), torch.zeros_like(p))
    out["max_f"] = float(f.max())
    return out


def binary_metrics(prob: ArrayLike, target: ArrayLike, ignore_index: int = -1) -> dict[str, float]:
    """``{"iou", "max_f"}`` over the whole set (see the module docstring)."""
    p, t, v = _flat(as_tensor(prob, "pred"), as_tensor(target, "target"), ignore_index)
    iou, pr = _counts(p, t, v)
    return _result(iou, pr, p.shape[0])


class BinaryMeter(Meter):
    """Streaming [TP, FP, FN], per-threshold precision/recall sums and an image count."""

    def __init__(self, ignore_index: int = -1) -> None:
        self.ignore_index = ignore_index
        super().__init__()

    def _reset_state(self) -> None:
        self._iou = torch.zeros(3, dtype=torch.int64)
        self._pr = torch.zeros(2, LEVELS, dtype=torch.float64)
        self._images = torch.zeros(1, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        p, t, v = _flat(pred, target, self.ignore_index)
        iou, pr = _counts(p, t, v)
        self._iou = self._iou.to(iou.device) + iou
        self._pr = self._pr.to(pr.device) + pr
        self._images = self._images.to(iou.device) + p.shape[0]

    def _all_reduce(self) -> None:
        self._iou = sum_across_ranks(self._iou)
        self._pr = sum_across_ranks(self._pr)
        self._images = sum_across_ranks(self._images)

    def compute(self) -> dict[str, float]:
        return _result(self._iou, self._pr, int(self._images.item()))
