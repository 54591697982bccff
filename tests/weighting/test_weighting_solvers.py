"""The K x K solvers behind MGDA, UPGrad and DualProj reach the optimum of their problem.

Over 300 random cases (tests/helpers/matrices.py: K = 3..20, rank-deficient, strongly/strictly weakly/not
weakly stationary, near-duplicate rows, norms spread over e^(+-4)), in float64 and float32, and on
TorchJD-shaped matrices:
- MGDA's min-norm point: the duality gap w^T M w - min_k (M w)_k (an upper bound on the distance
  to the optimal value, 0 exactly at the optimum) and the active set's KKT residual;
- UPGrad and DualProj: the worst conflict -min_k g_k . d (0 or less at the projection);
- UPGrad, MGDA and DualProj are permutation equivariant on TorchJD-shaped float32 matrices.

Tolerances come from the computation. The Gramian is accumulated in float64 (relative rounding
(D + K) eps64 ~ 1e-14 for these sizes), the active set solves K x K systems by a backward-stable
least squares (residual ~ K eps64 |Q| |z|, |z| <= 1e3 here), so the gap and conflict are ~1e-13 x
max_k |g_k|^2 at worst; the bound used, 1e-10 x max_k |g_k|^2, leaves a factor 1000 for other
machines' BLAS orderings and is 10^4 below the 1e-6 target (float32 dual-cone cases: see
CONE_BOUND_FLOAT32). Permutation: d is unique (a min-norm
point / a projection), so two orderings differ by the solver error, sqrt(gap) |g| ~ 1e-6 |g|
at the bound above, plus the float32 rounding of d (6e-8 |d|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.matrices import random_cases, torchjd_like
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import exact_gramian
from mtlkit.weighting._solvers import kkt_residual, min_norm_simplex, nonneg_qp, psd_part
from mtlkit.weighting.functional import dualproj_weights, upgrad_weights

CASES = random_cases(300, seed=21)
BOUND = 1e-10
#: float32 rows of a rank-deficient matrix (the strictly weakly stationary family) make the passive
#: systems singular to rounding (eigenvalues ~eps32^2 |g|^2), where the active set's steps are
#: least-squares solutions of singular systems; the worst conflict measured is 6.8e-10 x |g|^2 and
#: the bound is the 1e-6 x |g|^2 the solvers promise (issue 21's target)
CONE_BOUND_FLOAT32 = 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_min_norm_point_duality_gap_and_kkt_residual(dtype):
    worst_gap = worst_kkt = 0.0
    for kind, g in CASES:
        g = g.to(dtype)
        m = exact_gramian(g).numpy()
        scale = float(np.diag(m).max())
        w = min_norm_simplex(m)
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12, kind
        mw = m @ w
        worst_gap = max(worst_gap, float(w @ mw - mw.min()) / scale)
        q = psd_part(m / scale) + 1.0
        z = nonneg_qp(q, -np.ones(len(w)))
        worst_kkt = max(worst_kkt, kkt_residual(q, -np.ones(len(w)), z))
    assert worst_gap < BOUND and worst_kkt < BOUND, (worst_gap, worst_kkt)


@pytest.mark.parametrize("dtype,bound", [(torch.float64, BOUND), (torch.float32, CONE_BOUND_FLOAT32)])
def test_dual_cone_projections_do_not_conflict(dtype, bound):
    worst = 0.0
    for kind, g in CASES:
        g = g.to(dtype)
        m = exact_gramian(g)
        scale = float(m.diagonal().max())
        for w in (upgrad_weights(m), dualproj_weights(m)):
            worst = max(worst, float(-(m @ w).min()) / scale)
            assert float(w.min()) >= 1 / g.shape[0] - 1e-12, kind  # v >= u: UPGrad 1/K, DualProj 1/K
    assert worst < bound, worst


def test_solver_finds_a_known_optimum_and_rejects_a_wrong_one():
    """The checks can fail: a Frank-Wolfe-like point off the optimum has a gap the bound catches."""
    m = np.diag([1.0, 4.0, 9.0])  # orthogonal rows: w_k proportional to 1 / |g_k|^2
    w = min_norm_simplex(m)
    np.testing.assert_allclose(w, np.array([36.0, 9.0, 4.0]) / 49, rtol=1e-14)
    off = w + np.array([1e-4, -1e-4, 0.0])
    assert float(off @ m @ off - (m @ off).min()) / 9.0 > BOUND


@pytest.mark.parametrize("name", ["upgrad", "mgda", "dualproj"])
def test_permutation_equivariant_on_torchjd_shaped_float32_matrices(name):
    gen = torch.Generator().manual_seed(0)
    for g in torchjd_like(torch.Generator().manual_seed(1)):
        g = g.float()
        k = g.shape[0]
        names = [f"t{i}" for i in range(k)]
        ones = torch.ones(k)
        d = WEIGHTINGS.get(name)(names).aggregate(g.clone(), ones).double()
        gmax = float(g.double().norm(dim=1).max())
        for _ in range(5):
            perm = torch.randperm(k, generator=gen)
            dp = WEIGHTINGS.get(name)(names).aggregate(g[perm].clone(), ones).double()
            tol = BOUND**0.5 * gmax + 4 * torch.finfo(torch.float32).eps * float(d.abs().max())
            assert float((dp - d).abs().max()) <= tol, (name, tuple(g.shape))
