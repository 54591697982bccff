"""The property harness: every registered weighting method declares the guarantees it gives
(``Weighting.properties``), and one parametrised test per kind checks exactly those on random,
degenerate (rank-deficient, zero rows, opposite gradients, K = 1, K = 10) and hand-made inputs.
A method that declares nothing, or an unknown property, fails."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting.base import PROPERTIES

LOSS_PROPERTIES = {
    "positive_weights",
    "loss_scale_invariant",
    "loss_scale_invariant_at_equilibrium",
    "permutation_equivariant",
}
GRADIENT_PROPERTIES = set(PROPERTIES) - {"positive_weights", "loss_scale_invariant_at_equilibrium"}

GRADIENT_METHODS = [n for n, c in WEIGHTINGS.items() if c.needs_gradients]
LOSS_METHODS = [n for n, c in WEIGHTINGS.items() if not c.needs_gradients]


def _names(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


def _build(name: str, k: int):
    """A fresh instance for K tasks, or None when the method refuses K (it must say so: ConfigError)."""
    cls = WEIGHTINGS.get(name)
    if k < cls.min_tasks:
        with pytest.raises(ConfigError, match="tasks"):
            cls(_names(k))
        return None
    return cls(_names(k))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the matrices


def _random(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(k, d, generator=_gen(seed), dtype=torch.float64)


def _rank_deficient(seed: int) -> torch.Tensor:
    basis = torch.randn(2, 12, generator=_gen(seed), dtype=torch.float64)
    return torch.randn(4, 2, generator=_gen(seed + 1), dtype=torch.float64) @ basis


def _zero_row(seed: int) -> torch.Tensor:
    g = _random(3, 10, seed)
    g[1] = 0
    return g


CASES: dict[str, Callable[[], torch.Tensor]] = {
    "random_k3": lambda: _random(3, 20, 0),
    "random_k3_b": lambda: _random(3, 6, 1),
    "random_k10": lambda: _random(10, 40, 2),
    "k1": lambda: _random(1, 8, 3),
    "rank_deficient": lambda: _rank_deficient(4),
    "zero_row": lambda: _zero_row(5),
    "opposite": lambda: torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], dtype=torch.float64),
    "orthogonal_scaled": lambda: torch.tensor([[3.0, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]], dtype=torch.float64),
    "obtuse_pair": lambda: torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64),
    "large_scale_k3": lambda: 1e4 * _random(3, 9, 6),
}
FULL_RANK = {"random_k3", "random_k3_b", "random_k10", "k1", "orthogonal_scaled", "obtuse_pair", "large_scale_k3"}


def _losses(k: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(k, generator=_gen(100 + seed), dtype=torch.float64) + 0.5


def _aggregate(name: str, g: torch.Tensor, losses: torch.Tensor) -> torch.Tensor | None:
    out = _aggregate_with_weights(name, g, losses)
    return None if out is None else out[0]


def _aggregate_with_weights(
    name: str, g: torch.Tensor, losses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(update in float64, the method's last weights), or None when the method refuses K."""
    method = _build(name, g.shape[0])
    if method is None:
        return None
    for p in method.parameters():
        p.grad = None
    d = method.aggregate(g.clone(), losses.clone())
    assert d.shape == (g.shape[1],)
    assert torch.isfinite(d).all(), (name, d)
    assert torch.isfinite(method.last_weights).all()
    assert method.last_weights.shape == (g.shape[0],)
    return d.double(), method.last_weights.detach().clone()


def _conflict_tolerance(g: torch.Tensor, d: torch.Tensor, weights: torch.Tensor) -> float:
    """How negative g_k . d may be from rounding alone, for a non-conflicting d = sum_j w_j g_j.

    1e-6 |g|max |d| covers the iterative solvers' stopping rules (relative to the update), and the
    floor covers rounding: a weight solved to a KKT residual of r |g|^2 and the float64 sums
    behind d and g_k . d give |error| <= (r + (K + D) eps64 sum_j |w_j|) |g|max^2; with r ~ 1e-13
    and a safety factor 100 that is the floor below (without it the bound collapses to 1e-22 when
    d is 1e-16 at a Pareto-stationary point, and then only a machine's rounding decides).
    """
    k, dim = g.shape
    gmax = float(g.norm(dim=1).max())
    w_sum = max(float(weights.double().abs().sum()), 1.0)
    floor = 100 * (1e-13 + (k + dim) * torch.finfo(torch.float64).eps * w_sum) * gmax**2
    return 1e-6 * gmax * float(d.norm()) + floor


def _close(a: torch.Tensor, b: torch.Tensor, scale: float, rtol: float = 1e-5) -> bool:
    return bool(((a - b).abs() <= rtol * max(scale, 1e-30) + 1e-12).all())


# ------------------------------------------------------------------ declarations


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_method_declares_known_properties_for_its_kind(name):
    cls = WEIGHTINGS.get(name)
    assert cls.properties, f"{name} declares no property"
    allowed = GRADIENT_PROPERTIES if cls.needs_gradients else LOSS_PROPERTIES
    assert set(cls.properties) <= allowed, set(cls.properties) - allowed
    assert not ({"non_conflicting", "non_conflicting_full_rank"} <= set(cls.properties))
    assert not ({"mean_when_equal", "sum_when_equal"} <= set(cls.properties))


def test_harness_catches_a_method_that_breaks_its_declaration():
    """The checks can fail: a sign-flipping 'method' fails non_conflicting on the first matrix."""
    g = CASES["random_k3"]()
    d = -g.sum(0)
    assert not bool((g @ d >= 0).all())


# ------------------------------------------------------------------ gradient level


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_method_properties(name, case):
    cls = WEIGHTINGS.get(name)
    props = cls.properties
    g = CASES[case]()
    k = g.shape[0]
    losses = _losses(k)
    out = _aggregate_with_weights(name, g, losses)
    if out is None:
        return
    d, weights = out
    if "non_conflicting" in props or ("non_conflicting_full_rank" in props and case in FULL_RANK):
        assert bool((g @ d >= -_conflict_tolerance(g, d, weights)).all()), (g @ d).tolist()
    if "permutation_equivariant" in props:
        perm = torch.randperm(k, generator=_gen(7))
        d_perm = _aggregate(name, g[perm], losses[perm])
        assert _close(d_perm, d, float(g.abs().max()) * k, rtol=1e-5), (d, d_perm)
    if "loss_scale_invariant" in props:
        c = torch.exp(torch.randn(k, generator=_gen(8), dtype=torch.float64))
        d_scaled = _aggregate(name, g * c[:, None], losses * c)
        if float(d.norm()) > 1e-9 * float(g.norm()):
            cos = float(d_scaled @ d) / (float(d_scaled.norm()) * float(d.norm()))
            assert cos > 1 - 1e-6, cos
        else:
            assert float(d_scaled.norm()) <= 1e-6 * float((g * c[:, None]).norm())


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_method_on_equal_rows(name, k):
    props = WEIGHTINGS.get(name).properties
    row = _random(1, 11, 9)
    d = _aggregate(name, row.repeat(k, 1), torch.ones(k, dtype=torch.float64))
    if d is None:
        return
    if "mean_when_equal" in props:
        torch.testing.assert_close(d, row[0], rtol=1e-5, atol=1e-7)
    if "sum_when_equal" in props:
        torch.testing.assert_close(d, k * row[0], rtol=1e-5, atol=1e-7)


PARETO_STATIONARY = {
    "opposite": lambda: CASES["opposite"](),
    "three_sum_zero": lambda: torch.cat([(g := _random(2, 7, 10)), -(g.sum(0, keepdim=True))]),
    "weighted_sum_zero": lambda: torch.cat([(g := _random(2, 7, 11)), -(0.3 * g[:1] + 1.7 * g[1:])]),
}


@pytest.mark.parametrize("case", list(PARETO_STATIONARY))
@pytest.mark.parametrize("name", [n for n in GRADIENT_METHODS if "pareto_stationary" in WEIGHTINGS.get(n).properties])
def test_gradient_method_stationary_at_pareto_stationary_points(name, case):
    g = PARETO_STATIONARY[case]()
    d = _aggregate(name, g, torch.ones(g.shape[0], dtype=torch.float64))
    if d is None:
        return
    assert float(d.norm()) <= 1e-6 * float(g.norm(dim=1).max()), d


LINEAR = [n for n in GRADIENT_METHODS if "linear_under_scaling" in WEIGHTINGS.get(n).properties]


@pytest.mark.parametrize("name", LINEAR)
def test_gradient_method_linear_under_scaling(name):
    ones = torch.ones(3, dtype=torch.float64)
    for seed in range(3):
        g = _random(3, 8, 20 + seed)
        c1 = torch.rand(3, generator=_gen(30 + seed), dtype=torch.float64) + 0.1
        c2 = torch.rand(3, generator=_gen(40 + seed), dtype=torch.float64) + 0.1

        def agg(c: torch.Tensor, g: torch.Tensor = g) -> torch.Tensor:
            return _aggregate(name, g * c[:, None], ones)

        torch.testing.assert_close(agg(c1 + c2), agg(c1) + agg(c2), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(agg(2.5 * c1), 2.5 * agg(c1), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ loss level


def _run_losses(method, sequence: torch.Tensor, epoch_every: int = 2) -> list[torch.Tensor]:
    """Feed a (T, K) loss sequence; an epoch ends every ``epoch_every`` steps; returns the weights."""
    out = []
    seen = []
    for t, row in enumerate(sequence):
        losses = row.clone().requires_grad_(True)
        total = method.combine(losses)
        assert torch.isfinite(total), (type(method).__name__, row, total)
        total.backward()
        assert losses.grad is not None and torch.isfinite(losses.grad).all()
        out.append(method.last_weights.detach().double().clone())
        seen.append(row)
        if (t + 1) % epoch_every == 0:
            method.epoch_end(t // epoch_every, torch.stack(seen).mean(0))
            seen = []
    return out


def _sequences(n: int, length: int, k: int, seed: int) -> torch.Tensor:
    """n sequences of ``length`` loss vectors: each task a scale log-uniform in [1e-3, 1e2] times
    per-step noise in [0.5, 2]; about 5 % of the entries are 0 (a task absent from the batch)."""
    gen = _gen(seed)
    scale = torch.exp(torch.empty(n, 1, k, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e2), generator=gen))
    noise = torch.exp(
        torch.empty(n, length, k, dtype=torch.float64).uniform_(math.log(0.5), math.log(2.0), generator=gen)
    )
    absent = torch.rand(n, length, k, generator=gen) < 0.05
    return torch.where(absent, torch.zeros(()), scale * noise)


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_loss_method_weights_finite_and_positive_over_1000_random_losses(name):
    """1000 random loss vectors in 25 sequences of 40 steps at K = 3 (20 epochs: STCH leaves its
    5-epoch warm-up), 140 more at K = 10; learned weights trained by SGD between steps, as in a run."""
    for n, length, k, seed in [(25, 40, 3, 0), (10, 14, 10, 1)]:
        for seq in _sequences(n, length, k, seed):
            method = WEIGHTINGS.get(name)(_names(k))
            params = [p for p in method.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-2) if params else None
            for t, row in enumerate(seq):
                losses = row.clone().requires_grad_(opt is not None)
                total = method.combine(losses)
                assert torch.isfinite(total), (row, total)
                if opt is not None:
                    opt.zero_grad()
                    total.backward()
                    opt.step()
                w = method.last_weights.double()
                assert torch.isfinite(w).all(), (name, row, w)
                assert bool((w[row != 0] > 0).all()), (name, row, w)
                if t % 2 == 1:
                    method.epoch_end(t // 2, seq[t - 1 : t + 1].mean(0))


@pytest.mark.parametrize("name", [n for n in LOSS_METHODS if "loss_scale_invariant" in WEIGHTINGS.get(n).properties])
def test_loss_method_scale_invariance(name):
    seq = torch.exp(torch.empty(14, 3, dtype=torch.float64).uniform_(-2, 2, generator=_gen(50)))
    c = torch.tensor([1.0, 37.0, 0.02], dtype=torch.float64)
    base = _run_losses(WEIGHTINGS.get(name)(_names(3)), seq)
    scaled = _run_losses(WEIGHTINGS.get(name)(_names(3)), seq * c)
    for w, ws in zip(base, scaled):
        eff = ws * c  # the weight each unscaled task's gradient gets
        torch.testing.assert_close(eff / eff.sum(), w / w.sum(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "name", [n for n in LOSS_METHODS if "loss_scale_invariant_at_equilibrium" in WEIGHTINGS.get(n).properties]
)
def test_loss_method_scale_invariance_at_equilibrium(name):
    losses = torch.tensor([0.7, 2.0, 0.3])
    c = torch.tensor([1.0, 10.0, 0.1])

    def converged(ls: torch.Tensor) -> torch.Tensor:
        method = WEIGHTINGS.get(name)(_names(3))
        opt = torch.optim.Adam(method.parameters(), lr=0.2)
        for _ in range(120):
            opt.zero_grad()
            method.combine(ls.clone().requires_grad_(True)).backward()
            opt.step()
        method.combine(ls.clone())
        return method.last_weights.double()

    w, ws = converged(losses), converged(losses * c)
    eff = ws * c.double()
    torch.testing.assert_close(eff / eff.sum(), w / w.sum(), rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in LOSS_METHODS if "permutation_equivariant" in WEIGHTINGS.get(n).properties])
@pytest.mark.parametrize("k", [3, 10])
def test_loss_method_permutation_equivariance(name, k):
    seq = torch.exp(torch.empty(14, k, dtype=torch.float64).uniform_(-2, 2, generator=_gen(60 + k)))
    perm = torch.randperm(k, generator=_gen(61))
    base = _run_losses(WEIGHTINGS.get(name)(_names(k)), seq)
    permuted = _run_losses(WEIGHTINGS.get(name)(_names(k)), seq[:, perm])
    for w, wp in zip(base, permuted):
        torch.testing.assert_close(wp, w[perm], rtol=1e-5, atol=1e-9)
