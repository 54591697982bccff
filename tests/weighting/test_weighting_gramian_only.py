"""The ``gramian_only`` capability is true of every method that declares it: ``aggregate(G, losses)``
equals ``sum_k w_k g_k`` with ``w = weights_from_gramian(G G^T, losses)``, on matrices (no network).
A method that declared it but looked at G itself (a projection, a sign mask) would fail here; the
methods that do not declare it refuse ``weights_from_gramian``."""

from __future__ import annotations

import pytest
import torch

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import exact_gramian

GRADIENT_METHODS = sorted(n for n, c in WEIGHTINGS.items() if c.needs_gradients)


def _rows(k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K x D float64 task gradients with a shared component (conflicting and agreeing pairs) and K losses."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(k, d, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(
        1, d, generator=gen, dtype=torch.float64
    )
    g = g * torch.logspace(0, 1, k, dtype=torch.float64)[:, None]  # different scales per task
    return g, torch.rand(k, generator=gen, dtype=torch.float64) + 0.5


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_declared_gramian_only_methods_need_only_the_gramian(method: str, seed: int) -> None:
    cls = WEIGHTINGS.get(method)
    k = max(4, cls.min_tasks)
    names = [f"t{i}" for i in range(k)]
    g, losses = _rows(k, 40, seed)
    if not cls.gramian_only:
        with pytest.raises(NotImplementedError, match="needs the task gradients themselves"):
            cls(names).weights_from_gramian(exact_gramian(g), losses)
        return
    # two fresh instances (same seed, same state): one sees G, the other only G G^T
    full, gram = cls(names).double(), cls(names).double()
    update = full.aggregate(g, losses)
    w = gram.weights_from_gramian(exact_gramian(g), losses)
    assert w.shape == (k,) and w.dtype == torch.float64
    # float64 throughout: the two differ by the Gramian's rounding, ~1e-16 relative, moved by the solver
    assert torch.allclose(w @ g, update, rtol=1e-9, atol=1e-9 * float(update.abs().max()))
    assert torch.allclose(gram.last_weights, full.last_weights, rtol=1e-6, atol=1e-7)
