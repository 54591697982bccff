"""Shared pieces of the metrics package: input conversion, the error type, the Meter base class
and the two torch.distributed collectives the meters need (sum, gather of variable-sized data).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from mtlkit.errors import MtlkitError

ArrayLike = np.ndarray | Tensor


class MetricError(MtlkitError, ValueError):
    """Inputs a metric cannot score (bad label values, shapes, missing baseline metric)."""


def as_tensor(x: ArrayLike, name: str) -> Tensor:
    """A detached torch view of a NumPy array or tensor, so every metric accepts both."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (list, tuple, int, float, np.generic)):
        return torch.as_tensor(np.asarray(x))
    raise MetricError(f"{name}: expected a NumPy array or a torch tensor, got {type(x).__name__}")


def integer_labels(x: Tensor, name: str) -> Tensor:
    """``x`` as int64; floating input is accepted only when every value is a whole number."""
    if x.dtype == torch.bool:
        raise MetricError(f"{name}: expected integer labels, got a boolean array")
    if x.is_floating_point() or x.is_complex():
        if x.is_complex() or bool((x != torch.round(x)).any()):
            raise MetricError(f"{name}: expected integer labels, got non-integer {x.dtype} values")
    return x.to(torch.int64)


def distributed_active() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """The device collectives run on: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across_ranks(t: Tensor) -> Tensor:
    """Element-wise sum of ``t`` over all ranks, returned on ``t``'s device."""
    buf = t.to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def gather_variable(t: Tensor) -> Tensor:
    """Concatenation (in rank order) of every rank's 1-D ``t``, whose lengths may differ; on CPU.

    Sizes are gathered first, each rank pads to the largest size, all_gather runs once, and the
    padding is cut off. Peak memory per rank: world_size x the largest rank's data, plus the result.
    """
    device = _comm_device()
    world = dist.get_world_size()
    local = t.reshape(-1).to(device)
    size = torch.tensor([local.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    if largest == 0:
        return torch.empty(0, dtype=t.dtype)
    padded = torch.zeros(largest, dtype=local.dtype, device=device)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n].cpu() for p, n in zip(parts, counts)])


class Meter(ABC):
    """A streaming accumulator of one task's metrics over a whole evaluation set.

    ``update(pred, target)`` per batch, ``all_reduce()`` once after the last batch (sums the state
    over torch.distributed ranks; a no-op outside a process group), ``compute()`` for
    ``{metric: float}``. State is integer counts (int64) and float64 sums, so the result equals the
    one-shot function on the concatenated data, never a mean of per-batch values. After a
    distributed ``all_reduce`` the meter holds the global state: calling it again does nothing and
    ``update`` raises until ``reset()``.
    """

    def __init__(self) -> None:
        self._reduced = False
        self._reset_state()

    def reset(self) -> None:
        """Forget everything seen so far (start a new evaluation set)."""
        self._reduced = False
        self._reset_state()

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one batch (tensors on any device, or NumPy arrays) to the running state."""
        if self._reduced:
            raise RuntimeError(f"{type(self).__name__}.update after all_reduce: call reset() first")
        self._update(as_tensor(pred, "pred"), as_tensor(target, "target"))

    def all_reduce(self) -> None:
        """Sum the state over all ranks when torch.distributed is initialised; else do nothing."""
        if not distributed_active() or self._reduced:
            return
        self._all_reduce()
        self._reduced = True

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything seen (NaN values when no pixel/sample was valid)."""

    @abstractmethod
    def _reset_state(self) -> None:
        """Create empty state."""

    @abstractmethod
    def _update(self, pred: Tensor, target: Tensor) -> None:
        """Accumulate one batch of converted tensors."""

    @abstractmethod
    def _all_reduce(self) -> None:
        """Replace the local state by its sum over ranks."""
