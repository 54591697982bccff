"""Pieces the method files share: the Gramian-based base class and checkpointable random state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import Weighting

#: columns per float64 block of :func:`exact_gramian` and :func:`combine_rows` (8 MiB per task)
GRAMIAN_BLOCK = 1 << 20


def combine_rows(weights: Tensor, grads: Tensor) -> Tensor:
    """sum_k weights[k] grads[k] as a float32 (or float64) D-vector on the gradients' device.

    Accumulated in float64 a block of columns at a time, then rounded once: the solvers may return
    large weights on rows that nearly cancel (a near-singular G), and a float32 sum would add an
    error of eps32 sum_k |w_k| |g_k| to a result much smaller than that.
    """
    dtype = torch.float64 if grads.dtype == torch.float64 else torch.float32
    w = weights.to(device=grads.device, dtype=torch.float64)
    parts = [w @ block.double() for block in grads.split(GRAMIAN_BLOCK, dim=1)]
    return torch.cat(parts).to(dtype) if parts else grads.new_zeros(grads.shape[1], dtype=dtype)


def exact_gramian(grads: Tensor) -> Tensor:
    """G G^T accumulated in float64 (K x K, CPU), a block of columns at a time.

    A float32 product g_i . g_j carries a rounding of ~sqrt(D) 6e-8 |g_i| |g_j|, enough to move the
    min-norm and dual-cone solutions by 1e-6 |g|^2 and to hide a singular Gramian behind eigenvalues
    of 1e-8 (both signs); in float64 the rounding is 1e-16 and a rank-deficient G shows as such.
    """
    k = grads.shape[0]
    out = torch.zeros(k, k, dtype=torch.float64, device=grads.device)
    for block in grads.split(GRAMIAN_BLOCK, dim=1):
        b = block.double()
        out += b @ b.T
    return out.cpu()


class GramianWeighting(Weighting):
    """A gradient method whose task weights depend on the gradients only through G G^T.

    Subclasses implement ``gramian_weights(gramian, losses) -> K weights``; the update is
    ``sum_k w_k g_k``. This keeps the method a small pure function of a K x K matrix.
    """

    needs_gradients = True
    gramian_only = True

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Task weights (K, float64) from the K x K Gramian and the K detached losses."""
        raise NotImplementedError

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """sum_k w_k g_k with w from the (float64-accumulated) Gramian of ``grads``."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        return combine_rows(self.weights_from_gramian(exact_gramian(grads), losses), grads)

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The weights ``aggregate`` combines the rows with, from the Gramian alone (``grad_path: gramian``)."""
        k = self.num_tasks
        if tuple(gramian.shape) != (k, k):
            raise ValueError(f"{type(self).__name__}: expected a {k} x {k} Gramian, got {tuple(gramian.shape)}")
        w = self.gramian_weights(gramian.double().cpu(), losses.detach().double().cpu())
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return w


def work_dtype(grads: Tensor) -> torch.dtype:
    """The dtype methods compute on gradients of ``grads``'s dtype in: float32 or float64 as they are, float32 for
    the half-precision ones (autocast rows)."""
    return grads.dtype if grads.dtype in (torch.float32, torch.float64) else torch.float32


def simplex_start(method: Weighting, state: Tensor) -> tuple[np.ndarray, float]:
    """(warm start, mass) of a per-task weight vector kept on the simplex, for the tasks of the step.

    Every task present: the vector itself and mass 1. Inside :meth:`Weighting.only`: the present
    tasks' entries renormalised to sum to 1 (their conditional share; uniform when they hold no
    mass) and the mass they hold, which :func:`simplex_put` gives back to them, so the absent tasks'
    weights are unchanged and the whole vector stays on the simplex.
    """
    if method.present is None:
        return state.detach().double().cpu().numpy(), 1.0
    sub = method.select(state).detach().double().cpu().numpy()
    mass = float(sub.sum())
    if not mass > 0:
        return np.full(sub.shape[0], 1.0 / sub.shape[0]), 0.0
    return sub / mass, mass


def simplex_put(method: Weighting, state: Tensor, weights: np.ndarray, mass: float) -> None:
    """Store the step's new simplex weights (of the present tasks) back into ``state`` (:func:`simplex_start`)."""
    method.put(state, torch.from_numpy(weights * mass if method.present is not None else weights))


def check_grads(grads: Tensor, num_tasks: int, who: str) -> None:
    """A gradient matrix must be K x D for the K tasks the method was built with."""
    if grads.dim() != 2 or grads.shape[0] != num_tasks:
        raise ValueError(f"{who}.aggregate: expected a {num_tasks} x D gradient matrix, got {tuple(grads.shape)}")


def new_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (each method owns one, so runs are reproducible)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"weighting.options.seed must be an integer, got {seed!r}")
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def generator_state(gen: torch.Generator) -> Tensor:
    """The generator's state as a uint8 tensor (loads with ``weights_only=True``)."""
    return gen.get_state().clone()


def set_generator_state(gen: torch.Generator, state: Any) -> None:
    """Restore a state saved by :func:`generator_state` (from any device)."""
    gen.set_state(torch.as_tensor(state, dtype=torch.uint8).cpu())


def present_mask(losses: Tensor) -> Tensor:
    """True where a loss is not exactly 0.

    The training step passes a constant 0 for a task absent from the batch (one domain per
    batch); learned per-task terms (log-variances, loss scales, FAMO logits) must not drift then.
    """
    return losses.detach() != 0


def positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """A validated option value: a real number > 0 (or >= 0); ConfigError naming the option."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"weighting.options.{name} must be a number, got {value!r}") from None
    if not (out > 0 or (allow_zero and out == 0)) or out != out:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"weighting.options.{name} must be {bound}, got {value!r}")
    return out
