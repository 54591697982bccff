"""MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, ICLR 2023): tracked multi-objective gradients.

Paper: [Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
Approach](https://arxiv.org/abs/2210.12624), ICLR 2023.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import check_grads, combine_rows, positive_float, simplex_put, simplex_start, work_dtype
from mtlkit.weighting._solvers import project_simplex
from mtlkit.weighting.base import Weighting


def moco_step(
    grads: Tensor,
    losses: Tensor,
    tracked: Tensor | None,
    lam: np.ndarray,
    step: int,
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    *,
    tracked_steps: list[int] | None = None,
) -> tuple[Tensor, np.ndarray, Tensor]:
    """(d, new_lambda, new_tracked) for step ``step`` (1-based).

    Rows are normalised to g_k L_k / ||g_k|| (the authors' code); the tracked gradients follow
    y <- y - beta_t (y - g) with beta_t = beta / t^beta_sigma (y starts at 0); then
    lambda <- Pi_simplex(lambda - gamma_t (Y Y^T + rho I) lambda), gamma_t = gamma / t^gamma_sigma,
    and d = Y^T lambda. ``tracked_steps``: each row's own t in beta_t (the number of times that
    task's gradient has been tracked, this step included); default ``step`` for every row.
    """
    g = grads.to(work_dtype(grads))
    norms = g.norm(dim=1, keepdim=True)
    scaled = g / (norms + 1e-8) * losses.to(device=g.device, dtype=g.dtype)[:, None]
    if tracked_steps is None or len(set(tracked_steps)) == 1:
        b: float | Tensor = beta / float(step if tracked_steps is None else tracked_steps[0]) ** beta_sigma
    else:
        b = torch.tensor([beta / float(t) ** beta_sigma for t in tracked_steps], dtype=g.dtype, device=g.device)[
            :, None
        ]
    y = scaled * b if tracked is None or tracked.shape != g.shape else tracked.to(g) + b * (scaled - tracked.to(g))
    yy = (y @ y.T).double().cpu().numpy()
    c = gamma / float(step) ** gamma_sigma
    new_lam = project_simplex(lam - c * (yy + rho * np.eye(lam.shape[0])) @ lam)
    return combine_rows(torch.from_numpy(new_lam), y), new_lam, y


@WEIGHTINGS.register("moco")
class MoCo(Weighting):
    r"""MoCo: MGDA on tracked (moving-average) gradients, with the weights moved one projected step a batch.

    Tracking removes the bias of stochastic MGDA: each task's gradient estimate $y_k$ is an average
    over batches with a decaying rate $\beta_t$, and $\lambda$ follows projected gradient steps
    $\lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma_t (Y Y^\top \lambda + \rho \lambda)\big)$ on
    $\frac{1}{2} \lVert Y^\top \lambda \rVert^2 + \frac{\rho}{2} \lVert \lambda \rVert^2$ instead of being
    solved exactly; the update is $d = Y^\top \lambda$.

    Options: `beta` (0.5), `beta_sigma` (0.5), `gamma` (0.1), `gamma_sigma` (0.5), `rho` (0.0): LibMTL's
    defaults from the authors' code. The authors' code replaces the paper's simplex projection by a
    softmax; this follows the paper (projection). Parameter mode only (tracking representation
    gradients across batches would mix different samples). $Y$ ($K \times D$), $\lambda$ and the step counts
    are checkpointed.

    A step without some tasks (no label in the batch) tracks the present tasks' gradients only, each
    row at its own rate $\beta_t$ ($t$ the number of steps that task was present); the absent tasks'
    rows of $Y$ are left as they are. $\lambda$ moves on the present rows of $Y$ from the present
    tasks' share of it (renormalised to the simplex), which then gets back the mass those tasks held,
    so the absent tasks' weights are unchanged; $\gamma_t$ counts every step.

    Guarantees: $\lambda$ stays on the simplex; the tracked gradients are exponential averages of the
    loss-scaled unit gradients; the task order does not matter.
    """

    needs_gradients = True
    supports_representation = False
    properties = frozenset({"permutation_equivariant"})

    lam: Tensor

    def __init__(
        self,
        task_names: list[str],
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__(task_names)
        self.beta = positive_float("beta", beta)
        self.beta_sigma = positive_float("beta_sigma", beta_sigma, allow_zero=True)
        self.gamma = positive_float("gamma", gamma)
        self.gamma_sigma = positive_float("gamma_sigma", gamma_sigma, allow_zero=True)
        self.rho = positive_float("rho", rho, allow_zero=True)
        self.step = 0
        #: per task, how many steps it was present in (its tracking rate's t)
        self.task_steps = [0] * self.num_tasks
        self.tracked: Tensor | None = None
        self.register_buffer("lam", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """Track the gradients, move lambda, return Y^T lambda."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        self.step += 1
        idx = self.present_index()
        for i in idx:
            self.task_steps[i] += 1
        if self.present is not None and (self.tracked is None or self.tracked.shape[1] != grads.shape[1]):
            self.tracked = grads.new_zeros(self.all_tasks, grads.shape[1], dtype=work_dtype(grads))
        start, mass = simplex_start(self, self.lam)
        d, lam, tracked = moco_step(
            grads,
            losses.detach(),
            None if self.tracked is None else self.select(self.tracked),
            start,
            self.step,
            self.beta,
            self.beta_sigma,
            self.gamma,
            self.gamma_sigma,
            self.rho,
            tracked_steps=[self.task_steps[i] for i in idx],
        )
        if self.present is None:
            self.tracked = tracked
        else:
            assert self.tracked is not None
            self.put(self.tracked, tracked)
        simplex_put(self, self.lam, lam, mass)
        self.last_weights = torch.from_numpy(lam).to(device=self.last_weights.device, dtype=torch.float32)
        return d

    def get_extra_state(self) -> dict[str, Any]:
        """Step counts and the tracked gradients (a tensor, or None before the first step)."""
        return {"step": self.step, "task_steps": list(self.task_steps), "tracked": self.tracked}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the step counts and the tracked gradients (a checkpoint without per-task counts: ``step`` each)."""
        self.step = int(state.get("step", 0))
        self.task_steps = [int(t) for t in state.get("task_steps", [self.step] * self.all_tasks)]
        self.tracked = state.get("tracked")
