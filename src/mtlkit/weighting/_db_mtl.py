"""DB-MTL (Lin, Ye, Zhang & Kwok, 2023): dual balancing of loss scales and gradient magnitudes.

Paper: [Dual-Balancing for Multi-Task Learning](https://arxiv.org/abs/2308.12029), arXiv 2023.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import check_grads, combine_rows, positive_float
from mtlkit.weighting.base import Weighting


def db_mtl(
    grads: Tensor,
    losses: Tensor,
    buffer: Tensor | None,
    step: int,
    beta: float = 0.9,
    sigma: float = 0.5,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """(d, alpha, new_buffer) for step ``step`` (1-based).

    Loss-scale balancing: the rows become gradients of log(L_k + eps), g_k / (L_k + eps).
    Their EMA: h = beta_t h_old + (1 - beta_t) g with beta_t = beta / step^sigma, starting from
    h_old = 0 (the authors' code; a buffer of another shape restarts at 0). Gradient-magnitude
    balancing: d = sum_k alpha_k h_k, alpha_k = max_j ||h_j|| / ||h_k||, so every term has the
    largest norm.
    """
    g = grads if grads.dtype in (torch.float32, torch.float64) else grads.float()
    scale = 1.0 / (losses.to(device=g.device, dtype=g.dtype).abs() + eps)
    log_grads = g * scale[:, None]
    b = beta / float(step) ** sigma
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

    Guarantees: all $K$ terms $\alpha_k h_k$ have the same norm ($\max_j \lVert h_j \rVert$), so no task's
    gradient dominates; the update is invariant to multiplying any task's loss by a constant.
    """

    display_name = "DB-MTL"

    handles_absent_tasks = False
    absent_note = "it keeps a running average of every task's gradient"
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
        self.buffer: Tensor | None = None

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The dual-balanced update; advances the EMA buffer."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        self.step += 1
        d, alpha, self.buffer = db_mtl(grads, losses.detach(), self.buffer, self.step, self.beta, self.sigma)
        self.last_weights = alpha.to(device=self.last_weights.device, dtype=torch.float32)
        return d

    def get_extra_state(self) -> dict[str, Any]:
        """Step count and the gradient EMA buffer (a tensor, or None before the first step)."""
        return {"step": self.step, "buffer": self.buffer}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the step count and the buffer."""
        self.step = int(state.get("step", 0))
        self.buffer = state.get("buffer")
