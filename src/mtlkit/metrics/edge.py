"""Edge detection: optimal-dataset-scale (ODS) F-measure with a pixel tolerance.

At each threshold t of ``thresholds`` (BSDS's 99: t = 0.01 ... 0.99) a pixel is a predicted edge
when ``prob >= t``. A predicted edge pixel is correct when a ground-truth edge pixel lies within
``r`` pixels (Euclidean), and a ground-truth edge pixel is recovered when a predicted edge pixel
lies within ``r``, with ``r = tolerance * image diagonal`` (BSDS's maxDist 0.0075). Counts are
summed over the whole set per threshold; precision = correct / predicted, recall = recovered /
ground truth, F = 2 P R / (P + R), and ODS-F is the best threshold's F.

This approximates the BSDS benchmark, which matches predicted and true edge pixels one to one
(a bipartite assignment) after thinning the prediction: here a pixel may match any pixel within
the tolerance (distance transform, no one-to-one constraint, no thinning), so the figure is an
upper bound of the benchmark's and is meant for comparing runs of this toolkit.

Both counts need one pass per image, not one per threshold: the distance transform of the true
edges says which pixels are near a true edge, and a maximum filter of the probabilities over the
disk of radius ``r`` says, for each true edge pixel, the largest threshold at which it is recovered.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, integer_labels, sum_across_ranks

TOLERANCE = 0.0075
NUM_THRESHOLDS = 99


def thresholds(n: int = NUM_THRESHOLDS) -> np.ndarray:
    """BSDS's thresholds: ``n`` evenly spaced values strictly between 0 and 1."""
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


def disk(radius: float) -> np.ndarray:
    """Boolean footprint of the offsets (dy, dx) with dy^2 + dx^2 <= radius^2."""
    r = int(math.floor(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (y * y + x * x) <= radius * radius


def _image_counts(prob: np.ndarray, edge: np.ndarray, valid: np.ndarray, radius: float, ts: np.ndarray) -> np.ndarray:
    """int64 (4, T): correct predicted, predicted, recovered true, true edge pixels of one image."""
    out = np.zeros((4, len(ts)), dtype=np.int64)
    pred_levels = prob[valid]
    if edge.any():
        near_edge = ndimage.distance_transform_edt(~edge) <= radius
    else:
        near_edge = np.zeros_like(edge)
    shown = np.where(valid, prob, -1.0)
    best_near = ndimage.maximum_filter(shown, footprint=disk(radius), mode="constant", cval=-1.0)
    correct_levels = prob[valid & near_edge]
    recovered_levels = best_near[edge]
    for row, levels in enumerate((correct_levels, pred_levels, recovered_levels)):
        out[row] = len(levels) - np.searchsorted(np.sort(levels), ts, side="left")  # count of levels >= t
    out[3, :] = int(edge.sum())
    return out


def _batch_counts(prob: Tensor, target: Tensor, ignore_index: int, tolerance: float, n_thr: int) -> Tensor:
    if prob.ndim == 4 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if prob.ndim == 2 and target.ndim == 2:
        prob, target = prob[None], target[None]
    if prob.shape != target.shape or prob.ndim != 3:
        raise MetricError(f"edge: prediction shape {tuple(prob.shape)} does not match target {tuple(target.shape)}")
    target = integer_labels(target, "edge target")
    valid = target != ignore_index
    if bool((valid & (target != 0) & (target != 1)).any()):
        raise MetricError(f"edge target holds values other than 0, 1 and ignore_index={ignore_index}")
    p = prob.detach().to("cpu", torch.float64).numpy()
    v = valid.cpu().numpy()
    e = ((target == 1) & valid).cpu().numpy()
    h, w = p.shape[1:]
    radius = tolerance * math.hypot(h, w)
    ts = thresholds(n_thr)
    total = np.zeros((4, n_thr), dtype=np.int64)
    for i in range(p.shape[0]):
        total += _image_counts(p[i], e[i], v[i], radius, ts)
    return torch.from_numpy(total)


def _result(counts: Tensor) -> dict[str, float]:
    c = counts.cpu().to(torch.float64)
    correct, predicted, recovered, true = c
    if float(true[0]) == 0 and float(predicted.max()) == 0:
        return {"ods_f": math.nan}
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros_like(correct))
    recall = recovered / true.clamp(min=1)
    denom = precision + recall
    f = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(denom))
    return {"ods_f": float(f.max())}


def edge_metrics(
    prob: ArrayLike,
    target: ArrayLike,
    ignore_index: int = -1,
    tolerance: float = TOLERANCE,
    num_thresholds: int = NUM_THRESHOLDS,
) -> dict[str, float]:
    """``{"ods_f"}`` of edge probabilities (N, H, W) against 0/1 edge maps over the whole set."""
    return _result(
        _batch_counts(as_tensor(prob, "pred"), as_tensor(target, "target"), ignore_index, tolerance, num_thresholds)
    )


class EdgeMeter(Meter):
    """Streaming int64 per-threshold counts (computed on the CPU) -> ods_f."""

    def __init__(
        self, ignore_index: int = -1, tolerance: float = TOLERANCE, num_thresholds: int = NUM_THRESHOLDS
    ) -> None:
        self.ignore_index = ignore_index
        self.tolerance = tolerance
        self.num_thresholds = num_thresholds
        super().__init__()

    def _reset_state(self) -> None:
        self._counts = torch.zeros(4, self.num_thresholds, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        self._counts += _batch_counts(pred, target, self.ignore_index, self.tolerance, self.num_thresholds)

    def _all_reduce(self) -> None:
        self._counts = sum_across_ranks(self._counts)

    def compute(self) -> dict[str, float]:
        return _result(self._counts)
