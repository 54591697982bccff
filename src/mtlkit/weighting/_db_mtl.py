"""DB-MTL (Lin, Ye, Zhang & Kwok, 2023): dual balancing of loss scales and gradient magnitudes.

Paper: [Dual-Balancing for Multi-Task Learning](https://arxiv.org/abs/2308.12029), arXiv 2023.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import check_grads, combine_rows, positive_float, work_dtype
from mtlkit.weighting.base import Weighting


def db_mtl(
    grads: Tensor,
    losses: Tensor,
    buffer: Tensor | None,
    step: int,
    beta: float = 0.9,
    sigma: float = 0.5,
    eps: float = 1e-8,
    *,
    row_steps: list[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(d, alpha, new_buffer) for step ``step`` (1-based).

    Loss-scale balancing: the rows become gradients of log(L_k + eps), g_k / (L_k + eps).
    Their EMA: h = beta_t h_old + (1 - beta_t) g with beta_t = beta / step^sigma, starting from
    h_old = 0 (the authors' code; a buffer of another shape restarts at 0). Gradient-magnitude
    balancing: d = sum_k alpha_k h_k, alpha_k = max_j ||h_j|| / ||h_k||, so every term has the
    largest norm. ``row_steps``: each row's own t in beta_t (the steps that task's EMA has taken,
    this one included); default ``step`` for every row.
    """
    g = grads.to(work_dtype(grads))
    scale = 1.0 / (losses.to(device=g.device, dtype=g.dtype).abs() + eps)
    log_grads = g * scale[:, None]
    if row_steps is None or len(set(row_steps)) == 1:
        b: float | Tensor = beta / float(step if row_steps is None else row_steps[0]) ** sigma
    else:
        b = torch.tensor([beta / float(t) ** sigma for t in row_steps], dtype=g.dtype, device=g.device)[:, None]
    if buffer is None or buffer.shape != log_grads.shape:
        new = (1.0 - b) * log_grads
    else:
        new = b * buffer.to(log_grads) + (1.0 - b) * log_grads
    norms = new.norm(dim=1)
    alpha = torch.where(
        norms > 0, norms.max() / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms)
    )
    return combine_rows(alpha, new), alpha.double().cpu(), new


@WEIGHTINGS.register("db_mtl")
class DBMTL(Weighting):
    r"""DB-MTL: log-transformed losses, EMA of their gradients, each rescaled to the largest norm.

    $h_k$ is an exponential moving average of $\nabla \log L_k$; the update is
    $d = \sum_k \alpha_k h_k$ with $\alpha_k = \max_j \lVert h_j \rVert / \lVert h_k \rVert$.

    Options: `beta` (0.9) and `sigma` (0.5): EMA rate $\beta_t = \beta / t^{\sigma}$ (the authors' code).
    The $K \times D$ EMA buffer and the step count are checkpointed (extra state). Parameter mode only:
    an EMA of representation gradients across batches would mix different samples.
    Task-specific parameters get their raw loss gradient (the step's contract), not the log one.

    A step without some tasks (no label in the batch) advances the present tasks' EMAs only, each at
    its own rate ($t$ the number of steps that task was present); the absent tasks' rows are left
    as they are and $\alpha$ is taken over the present rows.

    Guarantees: all $K$ terms $\alpha_k h_k$ have the same norm ($\max_j \lVert h_j \rVert$), so no task's
    gradient dominates; the update is invariant to multiplying any task's loss by a constant.
    """

    display_name = "DB-MTL"

    properties = frozenset({"permutation_equivariant", "loss_scale_invariant"})

    needs_gradients = True
    supports_representation = False

    def __init__(self, task_names: list[str], beta: float = 0.9, sigma: float = 0.5) -> None:
        super().__init__(task_names)
        beta = float(beta)
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"weighting.options.beta must be in [0, 1), got {beta!r}")
        self.beta = beta
        self.sigma = positive_float("sigma", sigma, allow_zero=True)
        self.step = 0
        #: per task, how many steps it was present in (its EMA rate's t)
        self.task_steps = [0] * self.num_tasks
        self.buffer: Tensor | None = None

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The dual-balanced update; advances the EMA buffer."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        self.step += 1
        idx = self.present_index()
        for i in idx:
            self.task_steps[i] += 1
        steps = [self.task_steps[i] for i in idx]
        if self.present is None:
            d, alpha, self.buffer = db_mtl(
                grads, losses.detach(), self.buffer, self.step, self.beta, self.sigma, row_steps=steps
            )
        else:
            if self.buffer is None or self.buffer.shape[1] != grads.shape[1]:
                self.buffer = grads.new_zeros(self.all_tasks, grads.shape[1], dtype=work_dtype(grads))
            d, alpha, rows = db_mtl(
                grads, losses.detach(), self.select(self.buffer), self.step, self.beta, self.sigma, row_steps=steps
            )
            self.put(self.buffer, rows)
        self.last_weights = alpha.to(device=self.last_weights.device, dtype=torch.float32)
        return d

    def get_extra_state(self) -> dict[str, Any]:
        """Step counts and the gradient EMA buffer (a tensor, or None before the first step)."""
        return {"step": self.step, "task_steps": list(self.task_steps), "buffer": self.buffer}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the step counts and the buffer (a checkpoint without per-task counts: ``step`` each)."""
        self.step = int(state.get("step", 0))
        self.task_steps = [int(t) for t in state.get("task_steps", [self.step] * self.all_tasks)]
        self.buffer = state.get("buffer")
