"""GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, NeurIPS 2020).

Paper: [Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout](https://arxiv.org/abs/2010.06808),
NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import check_grads, generator_state, new_generator, set_generator_state, work_dtype
from mtlkit.weighting.base import Weighting


def graddrop(
    grads: Tensor, generator: torch.Generator | None = None, leak: float = 0.0, eps: float = 1e-7
) -> tuple[Tensor, Tensor]:
    """(d, weights): keep, per coordinate, only the gradients of one sign, chosen by sign purity.

    P = (1 + sum_k g_k / sum_k |g_k|) / 2 per coordinate; with U ~ Uniform[0, 1) per coordinate,
    positive entries survive where U < P and negative ones where U >= P; d = sum_k (leak_k +
    (1 - leak_k) M_k) g_k. ``weights``: the fraction of each task's squared gradient norm kept,
    (M_k g_k . g_k) / ||g_k||^2 (1 for a fully kept gradient, 0 for a fully dropped one).
    """
    g = grads.to(work_dtype(grads))
    total = g.sum(0)
    purity = 0.5 * (1.0 + total / (g.abs().sum(0) + eps))
    u = torch.rand(g.shape[1], generator=generator).to(device=g.device, dtype=g.dtype)
    keep_pos = (u < purity).unsqueeze(0)
    mask = torch.where(g > 0, keep_pos, ~keep_pos) & (g != 0)
    kept = g * mask
    if leak:
        kept = leak * g + (1.0 - leak) * kept
    d = kept.sum(0)
    sq = (g * g).sum(1)
    weights = torch.where(sq > 0, (kept * g).sum(1) / sq.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(sq))
    return d, weights.double().cpu()


@WEIGHTINGS.register("graddrop")
class GradDrop(Weighting):
    r"""GradDrop: per coordinate, drop all task gradients of the sign that loses a purity-biased coin flip.

    With the sign purity $P_i = \frac{1}{2}\left(1 + \frac{\sum_k g_{ki}}{\sum_k |g_{ki}|}\right)$ of
    coordinate $i$, the positive values are kept with probability $P_i$ and the negative ones otherwise.
    The paper applies it to activation gradients (sign purity over the batch after multiplying by
    the sign of the input activations); here it acts on the rows the step provides (parameter or
    representation gradients, every coordinate its own coin), without the activation-sign factor.

    Options: `leak` (0.0, the paper's default: no leak), `seed` (0) of the coin flips (checkpointed).

    Guarantees: a coordinate where all task gradients share a sign is kept unchanged (their sum);
    where signs conflict the result has the sign of the kept side (or is 0); $|d_i| \le \sum_k |g_{ki}|$.
    """

    properties = frozenset({"sum_when_equal"})

    needs_gradients = True

    def __init__(self, task_names: list[str], leak: float = 0.0, seed: int = 0) -> None:
        super().__init__(task_names)
        leak = float(leak)
        if not 0.0 <= leak <= 1.0:
            raise ConfigError(f"weighting.options.leak must be in [0, 1], got {leak!r}")
        self.leak = leak
        self.generator = new_generator(seed)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The sign-dropped sum of the task gradients."""
        check_grads(grads, self.num_tasks, type(self).__name__)
        d, w = graddrop(grads, self.generator, self.leak)
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return d

    def get_extra_state(self) -> dict[str, Any]:
        """The generator state (a uint8 tensor)."""
        return {"generator": generator_state(self.generator)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the generator state."""
        set_generator_state(self.generator, state["generator"])
