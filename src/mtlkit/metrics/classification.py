"""Classification accuracy (Visual Decathlon): percentage of samples whose class is right."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlkit.metrics.base import ArrayLike, Meter, MetricError, as_tensor, integer_labels, sum_across_ranks


def _correct_total(pred: Tensor, target: Tensor) -> Tensor:
    """int64 [correct, total] of a batch; ``pred`` is logits (N, C) or class ids (N,)."""
    target = integer_labels(target, "classification target").to(pred.device)
    if pred.ndim == target.ndim + 1:
        if pred.shape[:1] + pred.shape[2:] != target.shape:
            raise MetricError(
                f"classification: logits shape {tuple(pred.shape)} does not match target {tuple(target.shape)}"
            )
        bad = (target < 0) | (target >= pred.shape[1])
        if bool(bad.any()):
            raise MetricError(f"classification target holds label {int(target[bad][0])} outside [0, {pred.shape[1]})")
        pred = pred.argmax(dim=1)
    elif pred.shape == target.shape:
        if pred.is_floating_point():
            raise MetricError("classification: pred is shaped like target has floats; pass ids or logits")
        pred = integer_labels(pred, "classification pred")
    else:
        raise MetricError(
            f"classification: pred shape {tuple(pred.shape)} fits neither target "
            f"{tuple(target.shape)} nor (N, C) logits"
        )
    correct = (pred == target).sum()
    return torch.stack([correct.to(torch.int64), torch.tensor(target.numel(), device=pred.device)])


def _accuracy_result(counts: Tensor) -> dict[str, float]:
    correct, total = counts.cpu().tolist()
    return {"accuracy": 100.0 * correct / total if total else math.nan}


def accuracy(pred: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """``{"accuracy"}`` in percent; ``pred`` is logits (N, C) (argmax on dim 1) or class ids (N,)."""
    return _accuracy_result(_correct_total(as_tensor(pred, "pred"), as_tensor(target, "target")))


class AccuracyMeter(Meter):
    """Streaming int64 [correct, total] counts -> accuracy in percent (NaN before any sample)."""

    def _reset_state(self) -> None:
        self._counts = torch.zeros(2, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        counts = _correct_total(pred, target)
        self._counts = self._counts.to(counts.device) + counts

    def _all_reduce(self) -> None:
        self._counts = sum_across_ranks(self._counts)

    def compute(self) -> dict[str, float]:
        """``{"accuracy"}`` over every update (and every rank after all_reduce)."""
        return _accuracy_result(self._counts)
