"""The pure gradient-method functions, tested to each method's stated guarantee.

Hand cases with known answers (two orthogonal gradients, two opposite ones, one dominant one),
random matrices, and slow references (brute-force grids, scipy QPs, vector-space re-implementations).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtlkit.weighting import gramian
from mtlkit.weighting.functional import (
    aligned_mtl,
    balance_transform,
    cagrad,
    db_mtl,
    graddrop,
    gradvac,
    imtl_g,
    mgda,
    nash_mtl,
    nash_mtl_weights,
    pcgrad,
    upgrad,
    upgrad_weights,
)

ORTHO = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
OPPOSITE = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
DOMINANT = torch.tensor([[10.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)


def random_grads(seed: int, k: int = 3, d: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=gen, dtype=torch.float64)


def close(a, b, tol=1e-8):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=tol, atol=tol
    )


# ---------------------------------------------------------------- MGDA


def test_mgda_hand_cases():
    d, w = mgda(ORTHO)
    close(d, [0.5, 0.5])
    close(w, [0.5, 0.5])
    d, _ = mgda(OPPOSITE)
    close(d, [0.0, 0.0])
    d, w = mgda(DOMINANT)  # min over gamma of ||gamma g1 + (1 - gamma) g2||: gamma = 24 / 244
    close(w, [6 / 61, 55 / 61])
    close(d, [5 / 61, 55 / 61])


def test_mgda_l2_normalisation_equalises_norms():
    g = torch.tensor([[10.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d, w = mgda(g, normalization="l2")
    close(d, [0.5, 0.5])  # min-norm point of the unit gradients
    close(w, [0.05, 0.5])  # weights on the raw rows
    d_loss, _ = mgda(g, normalization="loss+", losses=torch.tensor([2.0, 4.0]))
    # rows / (L ||g||) = e1 / 2, e2 / 4: min-norm point (1/4 e1 + 1/8 e2) * 4/5 ... check optimality
    grads_n = torch.stack([g[0] / 20, g[1] / 4])
    ref, _ = mgda(grads_n)
    close(d_loss, ref)


def _simplex_grid(k: int, n: int) -> np.ndarray:
    if k == 2:
        t = np.linspace(0, 1, n + 1)
        return np.stack([t, 1 - t], 1)
    pts = [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]
    return np.array(pts)


@pytest.mark.parametrize("k,seed", [(2, 0), (2, 1), (3, 2), (3, 3), (3, 4)])
def test_mgda_is_min_norm_point_and_nonconflicting(k, seed):
    g = random_grads(seed, k=k, d=4)
    d, w = mgda(g)
    assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-9
    m = gramian(g).numpy()
    grid = _simplex_grid(k, 2000 if k == 2 else 150)
    brute = np.einsum("ni,ij,nj->n", grid, m, grid).min()
    value = float(d @ d)
    assert value <= brute + 1e-9
    # exact convex QP (scipy) as a second reference
    res = minimize(
        lambda x: x @ m @ x,
        np.full(k, 1 / k),
        method="SLSQP",
        bounds=[(0, 1)] * k,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        options={"ftol": 1e-15},
    )
    assert value <= res.fun + 1e-9 and value >= res.fun - 1e-7
    dots = g @ d
    assert torch.all(dots >= value - 1e-9)  # KKT: g_k . d >= ||d||^2 >= 0


# ---------------------------------------------------------------- PCGrad


def _pcgrad_vectors(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """PCGrad written on the vectors themselves (the paper's algorithm)."""
    out = []
    k = g.shape[0]
    for i in range(k):
        gi = g[i].clone()
        for j in torch.randperm(k, generator=gen).tolist():
            if j == i:
                continue
            dot = gi @ g[j]
            if dot < 0:
                gi = gi - dot / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return torch.stack(out).sum(0)


def test_pcgrad_hand_cases():
    d, w = pcgrad(ORTHO)
    close(d, [1.0, 1.0])
    close(w, [1.0, 1.0])
    d, _ = pcgrad(OPPOSITE)
    close(d, [0.0, 0.0])
    d, _ = pcgrad(DOMINANT)  # g1' = (5, 5), g2' = (0, 1)
    close(d, [5.0, 6.0])


def test_pcgrad_two_conflicting_gradients_become_nonconflicting():
    for seed in range(5):
        g = random_grads(seed, k=2, d=3)
        if g[0] @ g[1] >= 0:
            g[1] = -g[1]
        d, _ = pcgrad(g)
        assert torch.all(g @ d >= -1e-12)


def test_pcgrad_leaves_nonconflicting_gradients_unchanged():
    g = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.all(g @ g.T >= 0)
    d, w = pcgrad(g, torch.Generator().manual_seed(0))
    close(d, g.sum(0))
    close(w, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcgrad_gramian_form_matches_vector_algorithm(seed):
    g = random_grads(seed, k=4, d=5)
    d, _ = pcgrad(g, torch.Generator().manual_seed(seed))
    close(d, _pcgrad_vectors(g, torch.Generator().manual_seed(seed)), tol=1e-10)


# ---------------------------------------------------------------- GradDrop


def test_graddrop_keeps_sign_consistent_coordinates():
    g = torch.tensor([[1.0, -2.0, 0.0, 3.0], [2.0, -1.0, 5.0, -1.0]])
    for seed in range(10):
        d, _ = graddrop(g, torch.Generator().manual_seed(seed))
        close(d[:3], g[:, :3].sum(0))  # same sign (or zero) in columns 0..2: the plain sum
        assert float(d[3]) in (3.0, -1.0)  # conflict: exactly one side survives


def test_graddrop_keeps_positive_side_with_purity_probability():
    n = 4000
    g = torch.stack([torch.full((n,), 3.0), torch.full((n,), -1.0)])
    d, w = graddrop(g, torch.Generator().manual_seed(0))
    frac = float((d == 3.0).double().mean())  # P = (1 + 2/4) / 2 = 0.75
    assert abs(frac - 0.75) < 0.03
    assert torch.all((d == 3.0) | (d == -1.0))
    close(w, [frac, 1 - frac], tol=1e-6)


def test_graddrop_hand_cases():
    d, w = graddrop(ORTHO, torch.Generator().manual_seed(0))
    close(d, [1.0, 1.0])
    close(w, [1.0, 1.0])
    d, _ = graddrop(OPPOSITE, torch.Generator().manual_seed(0))
    assert d.tolist() in ([1.0, 0.0], [-1.0, 0.0])
    d, _ = graddrop(torch.tensor([[1.0, 1.0]]), leak=1.0)
    close(d, [1.0, 1.0])


# ---------------------------------------------------------------- GradVac


def _gradvac_vectors(g, targets, beta, gen):
    """GradVac written on the vectors (the paper's update, one parameter group)."""
    k = g.shape[0]
    new = targets.clone()
    out = []
    for i in range(k):
        gi = g[i].clone()
        for j in torch.randperm(k, generator=gen).tolist():
            if j == i:
                continue
            phi = float(gi @ g[j] / (gi.norm() * g[j].norm()))
            t = float(new[i, j])
            if phi < t:
                gi = gi + g[j] * gi.norm() * (t * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - t**2)) / (
                    g[j].norm() * math.sqrt(1 - t**2)
                )
            new[i, j] = (1 - beta) * t + beta * phi
        out.append(gi)
    return torch.stack(out).sum(0), new


def test_gradvac_matches_vector_algorithm_and_reaches_targets():
    g = random_grads(3, k=3, d=5)
    targets = torch.full((3, 3), 0.3, dtype=torch.float64)
    d, w, new = gradvac(g, targets, 0.01, torch.Generator().manual_seed(1))
    ref_d, ref_new = _gradvac_vectors(g, targets, 0.01, torch.Generator().manual_seed(1))
    close(d, ref_d, tol=1e-10)
    close(new, ref_new, tol=1e-12)
    # one pair with a target above its cosine: afterwards cos(g_0', g_1) equals the target exactly
    pair = random_grads(4, k=2, d=3)
    if pair[0] @ pair[1] > 0:
        pair[1] = -pair[1]
    tgt = torch.tensor([[0.0, 0.5], [-1.0, 0.0]], dtype=torch.float64)  # task 1 is never changed
    _, w, _ = gradvac(pair, tgt, 0.01)
    g0_new = pair[0] + (float(w[1]) - 1.0) * pair[1]
    close(w[0], 1.0)
    assert abs(float(g0_new @ pair[1] / (g0_new.norm() * pair[1].norm())) - 0.5) < 1e-10


def test_gradvac_hand_cases_and_pcgrad_limit():
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    d, _, new = gradvac(ORTHO, zeros, 0.01)
    close(d, [1.0, 1.0])  # cos = 0 = target: unchanged
    close(new, zeros)
    d, _, _ = gradvac(OPPOSITE, zeros, 0.01)
    close(d, [0.0, 0.0])
    d, _, new = gradvac(DOMINANT, zeros, 0.01)
    close(d, pcgrad(DOMINANT)[0])  # zero targets: the PCGrad projection
    cos = -10 / (10 * math.sqrt(2))
    close(new, [[0.0, 0.01 * cos], [0.01 * cos, 0.0]])


# ---------------------------------------------------------------- CAGrad


def _cagrad_brute(g: torch.Tensor, c: float, n: int = 1500) -> float:
    """max over a polar grid of the ball ||d - g0|| <= c ||g0|| (2-D) of min_k g_k . d."""
    g0 = g.mean(0).numpy()
    r = c * np.linalg.norm(g0)
    radii = np.linspace(0, r, 200)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = g0 + (radii[:, None, None] * np.stack([np.cos(angles), np.sin(angles)], 1)[None]).reshape(-1, 2)
    return float((pts @ g.numpy().T).min(1).max())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cagrad_stays_in_ball_and_maximises_worst_case(seed):
    c = 0.4
    g = random_grads(seed, k=2, d=2)
    d, w = cagrad(g, c=c, rescale=0)
    g0 = g.mean(0)
    assert float((d - g0).norm()) <= c * float(g0.norm()) + 1e-9
    worst = float((g @ d).min())
    brute = _cagrad_brute(g, c)
    assert worst >= brute - 1e-6
    assert worst <= brute + 1e-3  # the grid's resolution


def test_cagrad_hand_cases_and_rescale():
    d, _ = cagrad(ORTHO, c=0.4, rescale=0)
    close(d, [0.7, 0.7], tol=1e-6)  # symmetric: (1 + c) g0
    d1, _ = cagrad(ORTHO, c=0.4, rescale=1)
    close(d1, torch.tensor([0.7, 0.7]) / 1.16, tol=1e-6)
    d, _ = cagrad(OPPOSITE, c=0.4)
    close(d, [0.0, 0.0])
    d, _ = cagrad(DOMINANT, c=0.0, rescale=0)
    close(d, DOMINANT.mean(0))
    d, _ = cagrad(DOMINANT, c=0.4, rescale=0)
    assert float((DOMINANT @ d).min()) >= _cagrad_brute(DOMINANT, 0.4) - 1e-6


# ---------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 4)])
def test_imtl_g_equal_projections_on_unit_gradients(seed, k):
    g = random_grads(seed, k=k, d=6)
    d, w = imtl_g(g)
    proj = g @ d / g.norm(dim=1)
    close(proj, proj[0].expand(k), tol=1e-9)
    close(w.sum(), 1.0)


def test_imtl_g_hand_cases():
    d, w = imtl_g(torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    close(w, [0.75, 0.25])  # (b g1 + a g2) / (a + b), a = 1, b = 3
    close(d, [0.75, 0.75])
    d, _ = imtl_g(OPPOSITE)
    close(d, [0.0, 0.0])
    d, _ = imtl_g(DOMINANT)
    proj = DOMINANT @ d / DOMINANT.norm(dim=1)
    close(proj[0], proj[1])


# ---------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 5)])
def test_nash_fixed_point(seed, k):
    g = random_grads(seed, k=k, d=8)
    m = gramian(g)
    alpha = nash_mtl_weights(m)
    assert torch.all(alpha > 0)
    close(alpha * (m @ alpha), torch.ones(k), tol=1e-6)
    d, w = nash_mtl(g)
    close(g @ d, 1 / alpha, tol=1e-6)  # d . g_k = 1 / alpha_k > 0


def test_nash_hand_cases_normalisation_and_clip():
    d, w = nash_mtl(torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    close(w, [1.0, 1 / 3], tol=1e-9)
    close(d, [1.0, 1.0], tol=1e-9)
    d, _ = nash_mtl(OPPOSITE)
    assert float(d.norm()) < 1e-6  # no bargaining solution: no update
    m = gramian(DOMINANT)
    plain = nash_mtl_weights(m)
    scaled = nash_mtl_weights(m, normalize=True)
    close(scaled, plain * math.sqrt(float(torch.linalg.matrix_norm(m))), tol=1e-8)
    clipped = nash_mtl_weights(m, normalize=True, max_norm=1.0)
    assert abs(float(torch.sqrt(clipped @ m @ clipped)) - 1.0) < 1e-9


# ---------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 4)])
def test_aligned_matrix_has_equal_singular_values(seed, k):
    g = random_grads(seed, k=k, d=7)
    b = balance_transform(gramian(g))
    sv = torch.linalg.svdvals(b @ g)
    smin = torch.linalg.svdvals(g).min()
    close(sv, smin.expand(k), tol=1e-9)
    d, w = aligned_mtl(g)
    close(d, (b @ g).sum(0), tol=1e-9)


def test_aligned_hand_cases():
    d, _ = aligned_mtl(torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    close(d, [1.0, 1.0])  # sigma_min (g1 / |g1| + g2 / |g2|) with sigma_min = 1
    d, _ = aligned_mtl(OPPOSITE)
    close(d, [0.0, 0.0])
    d, _ = aligned_mtl(ORTHO)
    close(d, [1.0, 1.0])


# ---------------------------------------------------------------- UPGrad


def _project_dual_cone(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """argmin_x ||x - v|| s.t. G x >= 0 (scipy, in D space): the slow reference."""
    cons = [{"type": "ineq", "fun": lambda x, r=row: r @ x} for row in g]
    res = minimize(
        lambda x: ((x - v) ** 2).sum(),
        v.copy(),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return res.x


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (5, 4)])
def test_upgrad_nonconflicting_and_matches_projection_reference(seed, k):
    g = random_grads(seed, k=k, d=5)
    d, w = upgrad(g)
    assert torch.all(g @ d >= -1e-10)
    assert torch.all(w >= 1 / k - 1e-12)
    gn = g.numpy()
    ref = np.mean([_project_dual_cone(gn, row) for row in gn], axis=0)
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-6)


def test_upgrad_hand_cases():
    d, _ = upgrad(ORTHO)
    close(d, [0.5, 0.5])
    d, _ = upgrad(OPPOSITE)
    close(d, [0.0, 0.0])
    d, _ = upgrad(DOMINANT)  # projections (5, 5) and (0, 1), averaged
    close(d, [2.5, 3.0])
    close(upgrad_weights(gramian(DOMINANT)), [0.55, 3.0])  # (2.5, 3) = 0.55 g1 + 3 g2


# ---------------------------------------------------------------- DB-MTL


def test_db_mtl_balances_norms_and_ignores_loss_scale():
    g = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    d, alpha, buf = db_mtl(g, losses, None, step=1, beta=0.9, sigma=0.5)
    # log-gradients g / L = (2, 0), (0, 2); EMA from zero: 0.1 x; equal norms: alpha = 1
    close(buf, 0.1 * torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    close(alpha, [1.0, 1.0])
    close(d, [0.2, 0.2])
    d2, alpha2, buf2 = db_mtl(3 * g, 3 * losses, None, step=1)  # scaling a loss changes nothing
    close(d2, d, tol=1e-6)
    d3, alpha3, buf3 = db_mtl(g, losses, buf, step=2, beta=0.9, sigma=0.5)
    b = 0.9 / math.sqrt(2)
    close(buf3, b * buf + (1 - b) * torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    norms = buf3.norm(dim=1)
    close(alpha3 * norms, norms.max().expand(2))
