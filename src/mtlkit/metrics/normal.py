"""Surface normals: angular error statistics over the pixels that have a ground-truth normal.

The angle is acos(clamp(<p / |p|, t>, -1, 1)) in degrees, between the L2-normalised prediction
``p`` and the target ``t`` (expected unit length, not re-normalised), channel dim 1 of
(N, 3, ...) arrays. Valid pixels: any target component non-zero. A zero prediction vector scores
90 degrees. Keys: ``mean``, ``median`` (exact over the whole set: the average of the two middle
values for an even count), and ``within_11.25``, ``within_22.5``, ``within_30``: percentage (0-100)
of valid pixels with angle strictly below the threshold. All NaN when no pixel is valid.

Angles are computed in float64; the mean and the threshold counts use them directly, the median
uses them rounded to float32 (what the streaming meter stores), so function and meter agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, gather_variable, sum_across_ranks

THRESHOLDS = (11.25, 22.5, 30.0)
KEYS = ("mean", "median") + tuple(f"within_{t:g}" for t in THRESHOLDS)


def angular_errors(pred: ArrayLike, target: ArrayLike) -> Tensor:
    """1-D float64 angles in degrees at the valid pixels, on the inputs' device."""
    p, t = as_tensor(pred, "pred"), as_tensor(target, "target")
    if p.shape != t.shape:
        raise MetricError(f"normal: pred shape {tuple(p.shape)} differs from target {tuple(t.shape)}")
    if p.ndim < 2 or p.shape[1] != 3:
        raise MetricError(f"normal: expected (N, 3, ...) arrays with xyz on dim 1, got {tuple(p.shape)}")
    t = t.to(device=p.device, dtype=torch.float64)
    p = F.normalize(p.to(torch.float64), p=2, dim=1)
    valid = (t != 0).any(dim=1)
    cos = (p * t).sum(dim=1)[valid].clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def _stats(angles: Tensor) -> tuple[Tensor, Tensor]:
    """(float64 [sum of angles], int64 [count, below each threshold]) of a batch of angles."""
    counts = [angles.numel()] + [int((angles < th).sum()) for th in THRESHOLDS]
    return angles.sum().reshape(1).cpu(), torch.tensor(counts, dtype=torch.int64)


def _median(values: Tensor) -> float:
    """Exact median of a 1-D CPU tensor (mean of the two middle values for an even count)."""
    a = values.numpy()
    n = a.size
    if n == 0:
        return math.nan
    if n % 2:
        return float(np.partition(a, n // 2)[n // 2])
    part = np.partition(a, [n // 2 - 1, n // 2])
    return (float(part[n // 2 - 1]) + float(part[n // 2])) / 2


def _normal_result(total: Tensor, counts: Tensor, angles32: Tensor) -> dict[str, float]:
    n = int(counts[0])
    if n == 0:
        return {k: math.nan for k in KEYS}
    out = {"mean": float(total[0]) / n, "median": _median(angles32)}
    for th, c in zip(THRESHOLDS, counts[1:].tolist()):
        out[f"within_{th:g}"] = 100.0 * c / n
    return out


def normal_metrics(pred: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """Mean/median angle (degrees) and % within 11.25/22.5/30 degrees over all valid pixels."""
    angles = angular_errors(pred, target)
    total, counts = _stats(angles)
    return _normal_result(total, counts, angles.to(device="cpu", dtype=torch.float32))


class NormalMeter(Meter):
    """Streaming angle statistics; keeps every valid angle (float32, CPU) for the exact median.

    Memory: 4 bytes per valid pixel on the host (NYUv2 val, 654 images of 288 x 384: about 290 MB),
    twice that for a moment in ``compute``/``all_reduce``, and ``all_reduce`` gathers all ranks'
    angles onto every rank (world_size x the largest rank's share during the gather).
    """

    def _reset_state(self) -> None:
        self._total = torch.zeros(1, dtype=torch.float64)
        self._counts = torch.zeros(1 + len(THRESHOLDS), dtype=torch.int64)
        self._angles: list[Tensor] = []

    def _update(self, pred: Tensor, target: Tensor) -> None:
        angles = angular_errors(pred, target)
        total, counts = _stats(angles)
        self._total += total
        self._counts += counts
        self._angles.append(angles.to(device="cpu", dtype=torch.float32))

    def _all_angles(self) -> Tensor:
        """Every stored angle as one tensor (the chunks are merged so this is done once)."""
        if len(self._angles) != 1:
            self._angles = [torch.cat(self._angles) if self._angles else torch.empty(0, dtype=torch.float32)]
        return self._angles[0]

    def _all_reduce(self) -> None:
        self._total = sum_across_ranks(self._total)
        self._counts = sum_across_ranks(self._counts)
        self._angles = [gather_variable(self._all_angles())]

    def compute(self) -> dict[str, float]:
        """Normal metrics over every update (and every rank after all_reduce)."""
        return _normal_result(self._total, self._counts, self._all_angles())
