"""The methods added for issue 14, each against its definition: hand-worked cases and slower
references written here (scipy on the primal problem, brute force, plain loops)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting import GLS, STCH, ExcessMTL, GO4Align, MoCo, MoDo, gramian
from mtlkit.weighting._solvers import project_simplex
from mtlkit.weighting.functional import (
    config,
    dualproj,
    excess_risks,
    fairgrad_weights,
    kmeans_1d,
    krum,
    modo_step,
    sdmgrad_inner,
    sdmgrad_weights,
    trimmed_mean,
)

NAMES = ["a", "b", "c"]


def _g(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- loss level


def test_gls_by_hand_and_autograd_weights():
    losses = torch.tensor([1.0, 4.0, 2.0], requires_grad=True)
    method = GLS(NAMES)
    total = method.combine(losses)
    assert float(total.detach()) == pytest.approx(2.0)  # (1 * 4 * 2)^(1/3)
    total.backward()
    expected = [2 / 3, 1 / 6, 1 / 3]  # GLS / (K L_k)
    assert losses.grad.tolist() == pytest.approx(expected)
    assert method.last_weights.tolist() == pytest.approx(expected)
    absent = GLS(NAMES).combine(torch.tensor([1.0, 0.0, 4.0]))  # absent task left out: sqrt(4)
    assert float(absent) == pytest.approx(2.0)


def test_stch_warm_up_nadir_and_smooth_max_by_hand():
    method = STCH(NAMES, mu=1.0, warmup_epochs=2)
    losses = torch.tensor([2.0, 1.0, 4.0], requires_grad=True)
    total = method.combine(losses)
    assert float(total) == pytest.approx(math.log(8.0))  # warm-up: sum of log-losses
    assert method.last_weights.tolist() == pytest.approx([0.5, 1.0, 0.25])
    method.epoch_end(0, losses.detach())
    for ls in ([2.0, 1.0, 4.0], [4.0, 3.0, 2.0]):  # epoch 1: the last warm-up epoch, averaged
        method.combine(torch.tensor(ls))
    method.epoch_end(1, torch.ones(3))
    assert method.nadir == pytest.approx([3.0, 2.0, 3.0])
    losses = torch.tensor([3.0, 4.0, 1.5], requires_grad=True)
    total = method.combine(losses)
    r = [1.0, 2.0, 0.5]  # L / z
    assert float(total) == pytest.approx(3 * math.log(sum(r)))  # K mu log sum exp(log r / mu), mu = 1
    total.backward()
    expected = [3 * ri / sum(r) / li for ri, li in zip(r, [3.0, 4.0, 1.5])]
    assert losses.grad.tolist() == pytest.approx(expected)
    assert method.last_weights.tolist() == pytest.approx(expected)
    small_mu = STCH(NAMES, mu=1e-3, warmup_epochs=1)
    small_mu.epoch_end(0, torch.ones(3))  # no losses seen: nadir 1
    small_mu.combine(torch.tensor([3.0, 4.0, 1.5]))
    w = small_mu.last_weights * torch.tensor([3.0, 4.0, 1.5])
    assert w.tolist() == pytest.approx([0.0, 3.0, 0.0], abs=1e-6)  # mu -> 0: all on the worst task


def _sse(v: np.ndarray, lab: np.ndarray) -> float:
    return sum(((v[lab == g] - v[lab == g].mean()) ** 2).sum() for g in set(lab.tolist()))


@pytest.mark.parametrize("n,groups", [(3, 2), (5, 2), (6, 3), (7, 4)])
def test_kmeans_1d_matches_brute_force(n, groups):
    v = np.random.default_rng(n).normal(size=n)
    labels = kmeans_1d(v, groups)
    best = min(_sse(v, np.array(lab)) for lab in itertools.product(range(groups), repeat=n) if len(set(lab)) == groups)
    assert _sse(v, labels) == pytest.approx(best, abs=1e-12)


def test_go4align_weights_by_hand():
    method = GO4Align(NAMES, groups=2, step_size=0.1)
    losses = torch.tensor([1.0, 2.0, 4.0])
    method.combine(losses)
    p = torch.exp(-0.1 * losses.double()) / torch.exp(-0.1 * losses.double()).sum()
    ind = 7.0 / losses.double() * p  # (sum L / L_k) p_k
    # indicators fall as the loss grows: groups {task 0} and {tasks 1, 2}
    expected = torch.stack([ind[0], (ind[1] + ind[2]) / 2, (ind[1] + ind[2]) / 2])
    torch.testing.assert_close(method.last_weights.double(), expected)
    torch.testing.assert_close(method.probs, p)
    one_group = GO4Align(NAMES, groups=1, step_size=0.1)
    one_group.combine(losses)
    assert torch.allclose(one_group.last_weights.double(), ind.mean().expand(3))


# ---------------------------------------------------------------- gradient level


def test_fairgrad_solves_alpha_fair_condition():
    for alpha in (0.5, 1.0, 2.0, 5.0):
        for seed in range(3):
            g = _g(3, 10, seed)
            w = fairgrad_weights(gramian(g), alpha)
            lhs = (g @ g.T) @ w
            torch.testing.assert_close(lhs, w.pow(-1.0 / alpha), rtol=1e-6, atol=1e-9)
            assert bool((w > 0).all())
    # orthogonal rows of norms a_k: w_k a_k^2 = w_k^(-1/alpha) -> w_k = a_k^(-2 alpha / (alpha + 1))
    a = torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
    w = fairgrad_weights(torch.diag(a * a), 1.0)
    torch.testing.assert_close(w, 1.0 / a, rtol=1e-7, atol=0)


def test_config_hand_cases_and_pinv_reference():
    d, w = config(torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(d, torch.ones(3, dtype=torch.float64))
    d, _ = config(torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([1.75, 1.75], dtype=torch.float64))  # (3 + 0.5)/sqrt2 along (1,1)/sqrt2
    for seed in range(4):
        g = _g(3, 8, seed)
        u = g / g.norm(dim=1, keepdim=True)
        x = torch.linalg.pinv(u) @ torch.ones(3, dtype=torch.float64)  # the paper's form, in D dimensions
        gu = x / x.norm()
        ref = (g @ gu).sum() * gu
        d, _ = config(g)
        torch.testing.assert_close(d, ref, rtol=1e-8, atol=1e-10)
        cos = (u @ d) / d.norm()
        torch.testing.assert_close(cos, cos[0].expand(3))
        assert float(cos[0]) > 0


@pytest.mark.parametrize("seed", range(4))
def test_dualproj_matches_primal_projection(seed):
    g = _g(3, 5, seed)
    d, w = dualproj(g)
    mean = g.mean(0).numpy()
    gn = g.numpy()
    res = minimize(
        lambda x: 0.5 * ((x - mean) ** 2).sum(),
        mean,
        jac=lambda x: x - mean,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda x: gn @ x, "jac": lambda x: gn}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    torch.testing.assert_close(d, torch.from_numpy(res.x), rtol=1e-5, atol=1e-6)
    assert bool((w >= 1 / 3 - 1e-12).all())


def test_krum_by_hand_and_brute_force():
    g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    d, w = krum(g)  # scores 1, 1, 181: tie broken by the lower index
    assert w.tolist() == [1.0, 0.0, 0.0] and d.tolist() == [0.0, 0.0]
    d, _ = krum(g, n_selected=2)
    assert d.tolist() == [0.5, 0.0]
    g = _g(6, 4, 0)
    g[5] += 50.0  # an outlier is never selected
    d, w = krum(g, n_byzantine=1, n_selected=2)
    dist = torch.cdist(g, g) ** 2
    scores = [sorted(dist[i, j].item() for j in range(6) if j != i)[:3] for i in range(6)]
    chosen = sorted(range(6), key=lambda i: sum(scores[i]))[:2]
    torch.testing.assert_close(d, g[chosen].mean(0))
    assert w[5] == 0
    with pytest.raises(ConfigError, match="n_byzantine"):
        WEIGHTINGS.get("krum")(NAMES, n_byzantine=1)


def test_trimmed_mean_matches_sorted_reference():
    g = _g(5, 7, 1)
    for trim in (0, 1, 2):
        d, w = trimmed_mean(g, trim)
        ref = [sum(sorted(g[:, j].tolist())[trim : 5 - trim]) / (5 - 2 * trim) for j in range(7)]
        assert d.tolist() == pytest.approx(ref)
        assert float(w.sum()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="trim"):
        WEIGHTINGS.get("trimmed_mean")(["a", "b"])


@pytest.mark.parametrize("seed", range(3))
def test_sdmgrad_inner_loop_reaches_the_regularised_min_norm_point(seed):
    """With a small step the authors' projected heavy-ball loop converges to the QP's minimiser."""
    g = _g(3, 6, seed)
    m = gramian(g)
    w = sdmgrad_inner(m, np.full(3, 1 / 3), lam=0.3, n_iter=3000, lr=0.05)
    mn = m.numpy() / float(np.sqrt(np.diag(m.numpy())).mean() ** 2 + 1e-8)
    target = mn.mean(1)

    def objective(x: np.ndarray) -> float:
        return 0.5 * x @ mn @ x + 0.3 * x @ target

    res = minimize(
        objective,
        np.full(3, 1 / 3),
        method="SLSQP",
        bounds=[(0, 1)] * 3,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        options={"ftol": 1e-15},
    )
    assert objective(w) <= objective(res.x) + 1e-7
    # the authors' first step: w - lr (M w + lam t)
    one = sdmgrad_inner(m, np.full(3, 1 / 3), lam=0.3, n_iter=1, lr=0.05)
    by_hand = project_simplex(np.full(3, 1 / 3) - 0.05 * (mn @ np.full(3, 1 / 3) + 0.3 * target))
    assert one.tolist() == pytest.approx(by_hand.tolist())
    torch.testing.assert_close(sdmgrad_weights(w, 0.3), torch.from_numpy((w + 0.1) / 1.3))


def test_modo_step_by_hand_and_simplex_projection():
    lam = modo_step(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), np.array([0.5, 0.5]), gamma=0.1, rho=0.0)
    assert lam.tolist() == pytest.approx([0.575, 0.425])  # (0.45, 0.3) + 0.125
    v = np.array([0.2, -1.0, 3.0, 0.4])
    p = project_simplex(v)
    res = minimize(
        lambda x: ((x - v) ** 2).sum(),
        np.full(4, 0.25),
        method="SLSQP",
        bounds=[(0, 1)] * 4,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        options={"ftol": 1e-15},
    )
    assert p.tolist() == pytest.approx(res.x.tolist(), abs=1e-6)
    method = MoDo(["a", "b"], gamma=0.1, rho=0.0)
    method.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.ones(2))
    assert method.lam.tolist() == pytest.approx([0.575, 0.425])


def test_moco_first_steps_by_hand():
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 1.0], dtype=torch.float64)
    method = MoCo(["a", "b"], beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0)
    d = method.aggregate(g, losses)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)  # 0.5 * g_k / ||g_k|| * L_k
    lam = project_simplex(np.array([0.5, 0.5]) - 0.1 * np.diag([1.0, 0.25]) @ np.array([0.5, 0.5]))
    assert method.lam.tolist() == pytest.approx(lam.tolist())
    torch.testing.assert_close(d, torch.from_numpy(lam) @ y)
    d2 = method.aggregate(g, losses)
    b2 = 0.5 / math.sqrt(2)
    y2 = y + b2 * (2 * y - y)  # the target is g_hat = 2 y
    lam2 = project_simplex(lam - 0.1 / math.sqrt(2) * (y2 @ y2.T).numpy() @ lam)
    torch.testing.assert_close(d2, torch.from_numpy(lam2) @ y2)


def test_excess_mtl_two_steps_by_hand_and_gradient_scale_free():
    g1 = torch.tensor([[1.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
    g2 = torch.tensor([[2.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    method = ExcessMTL(["a", "b"], step_size=0.5)
    d = method.aggregate(g1, torch.ones(2))
    torch.testing.assert_close(d, g1.sum(0).float().double(), rtol=1e-6, atol=0)
    r0 = (g1 * g1 / torch.sqrt(g1 * g1 + 1e-7)).sum(1)
    r1 = (g2 * g2 / torch.sqrt(g1 * g1 + g2 * g2 + 1e-7)).sum(1)
    torch.testing.assert_close(excess_risks(g1, g1 * g1), r0)
    method.aggregate(g2, torch.ones(2))
    w = torch.exp(0.5 * r1 / r0)
    torch.testing.assert_close(method.loss_weights, 2 * w / w.sum())
    scaled = ExcessMTL(["a", "b"], step_size=0.5)
    c = torch.tensor([[10.0], [0.1]], dtype=torch.float64)
    scaled.aggregate(g1 * c, torch.ones(2))
    scaled.aggregate(g2 * c, torch.ones(2))
    torch.testing.assert_close(scaled.loss_weights, method.loss_weights, rtol=1e-4, atol=0)  # up to the 1e-7


def test_new_option_errors_are_config_errors():
    for name, options in [
        ("stch", {"mu": 0}),
        ("stch", {"warmup_epochs": 0}),
        ("go4align", {"groups": 0}),
        ("fairgrad", {"alpha": 0}),
        ("sdmgrad", {"n_iter": 0}),
        ("modo", {"gamma": -1}),
        ("moco", {"beta": 0}),
        ("excess_mtl", {"step_size": 0}),
        ("krum", {"n_selected": 4}),
        ("trimmed_mean", {"trim": -1}),
    ]:
        with pytest.raises(ConfigError, match="weighting"):
            WEIGHTINGS.get(name)(NAMES, **options)
