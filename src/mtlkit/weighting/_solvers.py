"""Small solvers on a K x K Gramian, shared by the gradient methods (float64, CPU, K small)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: relative cut-off of the passive-set solves (``lstsq``'s rcond): eigen-directions below it are
#: float64 rounding of a singular Gramian.
RCOND = 1e-15


def as_numpy(gramian: Tensor) -> np.ndarray:
    """A symmetric float64 numpy copy of a K x K Gramian."""
    m = gramian.detach().double().cpu().numpy()
    return 0.5 * (m + m.T)


def psd_part(m: np.ndarray) -> np.ndarray:
    """m with its rounding-level eigenvalues set to 0: the Gramian that rounding hid.

    A Gramian is PSD in exact arithmetic, so a negative eigenvalue -e shows that its entries carry
    rounding of about e (a float32 Gramian: ~1e-7 of its largest eigenvalue); eigenvalues within
    2 e of 0 are then indistinguishable from 0 and are cut. Without the cut the solvers invert
    such directions and return weights of 1e4 and more along a non-negative near-null combination
    of the rows, which the float32 combination of the rows turns into errors of |w| eps |g| (UPGrad
    lost permutation invariance that way on a rank-19 20 x 100 float32 matrix).
    """
    lam, vec = np.linalg.eigh(m)
    top = max(float(lam[-1]), 0.0)
    noise = 2.0 * max(-float(lam[0]), 0.0) + m.shape[0] * np.finfo(float).eps * top
    if lam[0] >= 0 and lam[0] > noise:
        return m
    lam = np.where(lam > noise, lam, 0.0)
    out = (vec * lam) @ vec.T
    return 0.5 * (out + out.T)


def nonneg_qp(q: np.ndarray, c: np.ndarray, tol: float = 1e-13, max_iter: int = 1000) -> np.ndarray:
    """z >= 0 minimising z^T q z / 2 + c^T z (q symmetric PSD, K x K): Lawson-Hanson's active set.

    The exact finite active-set method of Lawson & Hanson's NNLS, written on the Gramian: a
    variable enters the passive set P when its KKT multiplier -(q z + c)_j is the largest and
    above ``tol`` x the problem's scale, and the problem restricted to P is solved exactly
    (``lstsq`` with relative cut-off :data:`RCOND`), stepping back to the boundary when a variable
    would turn negative. Two changes keep it exact when q_PP is singular to rounding (rows of a
    rank-deficient float32 matrix): the entering variable first takes its exact line-search step,
    and the solve on P returns the solution nearest to z, not the least-norm one. At the end
    (q z + c)_P = 0 up to rounding and (q z + c)_j >= -tol x scale elsewhere (the KKT conditions):
    over the 300 random cases of tests/weighting/test_weighting_solvers.py the KKT residual is below 3e-15
    x scale, and below 1e-9 on float32 rows of rank-deficient matrices.
    """
    k = c.shape[0]
    scale = max(float(np.abs(np.diag(q)).max()), float(np.abs(c).max()), np.finfo(float).tiny)
    threshold = tol * scale
    passive = np.zeros(k, dtype=bool)
    z = np.zeros(k)
    for _ in range(max_iter):
        multiplier = -(q @ z + c)
        multiplier[passive] = -np.inf
        j = int(np.argmax(multiplier))
        if multiplier[j] <= threshold:
            break
        if q[j, j] > 0:
            # exact line search along e_j first: a descent step even where the passive system is
            # singular to rounding and its least-squares solution would send z_j back to 0
            z[j] = multiplier[j] / q[j, j]
        passive[j] = True
        for _ in range(k + 1):
            idx = np.flatnonzero(passive)
            # the solution on P nearest to z (the least-norm step from it): where q_PP is singular
            # to rounding the solutions form a line, and the least-norm solution itself may lie
            # at the far end of it
            qp = q[np.ix_(idx, idx)]
            s = np.zeros(k)
            s[idx] = z[idx] + np.linalg.lstsq(qp, -(c[idx] + qp @ z[idx]), rcond=RCOND)[0]
            if np.all(s[idx] > 0):
                z = s
                break
            neg = idx[s[idx] <= 0]
            ratios = z[neg] / (z[neg] - s[neg])
            alpha = float(ratios.min())
            z = z + alpha * (s - z)
            z[neg[ratios <= alpha]] = 0.0  # the blocking variable(s) leave, exactly at the boundary
            passive &= z > 0
            z[~passive] = 0.0
    return z


def kkt_residual(q: np.ndarray, c: np.ndarray, z: np.ndarray) -> float:
    """The largest violation of z's KKT conditions for min_{z >= 0} z^T q z / 2 + c^T z."""
    grad = q @ z + c
    on = z > 0
    return float(max(np.abs(grad[on]).max(initial=0.0), (-grad[~on]).max(initial=0.0), (-z).max(initial=0.0)))


def min_norm_simplex(m: np.ndarray) -> np.ndarray:
    """Weights w on the simplex minimising w^T m w (the min-norm point of the rows' convex hull).

    z >= 0 minimising ||A z||^2 + (1^T z - 1)^2 (A^T A = m) gives w = z / 1^T z exactly: its KKT
    conditions m z + (1^T z - 1) 1 >= 0, with equality on the support, are those of the simplex
    problem with multiplier (1 - 1^T z) / 1^T z = w^T m w. Solved by :func:`nonneg_qp` on m
    scaled to unit largest diagonal (the weights do not depend on the scale).
    """
    k = m.shape[0]
    scale = float(np.abs(np.diag(m)).max())
    if k == 1 or not np.isfinite(scale) or scale <= 0:
        return np.full(k, 1.0 / k)
    z = nonneg_qp(psd_part(m / scale) + 1.0, -np.ones(k))
    return z / z.sum()


def cone_projection_weights(m: np.ndarray, u: np.ndarray) -> np.ndarray:
    """v = argmin_{v >= u} v^T m v: the weights of the projection of G^T u onto the dual cone of G.

    With m = G G^T, the projection of G^T u onto {x : G x >= 0} is G^T v (TorchJD's UPGrad
    lemma); v = u + z with z >= 0 minimising (u + z)^T m (u + z), solved by :func:`nonneg_qp`
    on m scaled to unit largest diagonal.
    """
    scale = float(np.abs(np.diag(m)).max())
    if not np.isfinite(scale) or scale <= 0:
        return u.copy()
    ms = psd_part(m / scale)
    return u + nonneg_qp(ms, ms @ u)


def to_tensor(x: np.ndarray) -> Tensor:
    """A float64 CPU tensor from a numpy array."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def project_simplex(v: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``v`` onto the probability simplex (sort-based, exact)."""
    k = v.shape[0]
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, k + 1)
    rho = int(np.nonzero(u - css / idx > 0)[0][-1])
    theta = css[rho] / (rho + 1)
    return np.clip(v - theta, 0.0, None)
