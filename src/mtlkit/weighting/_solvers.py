"""Small solvers on a K x K Gramian, shared by the gradient methods (float64, CPU, K small)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor


def as_numpy(gramian: Tensor) -> np.ndarray:
    """A symmetric float64 numpy copy of a K x K Gramian."""
    m = gramian.detach().double().cpu().numpy()
    return 0.5 * (m + m.T)


def psd_factor(m: np.ndarray) -> np.ndarray:
    """A K x K matrix A with A^T A = m (m symmetric PSD; negative round-off eigenvalues are cut)."""
    lam, vec = np.linalg.eigh(m)
    lam = np.clip(lam, 0.0, None)
    return np.sqrt(lam)[:, None] * vec.T


def _min_norm_pair(aa: float, ab: float, bb: float) -> tuple[float, float]:
    """gamma in [0, 1] minimising ||gamma a + (1 - gamma) b||^2 from the inner products; and the value."""
    if ab >= aa:
        return 1.0, aa
    if ab >= bb:
        return 0.0, bb
    gamma = (bb - ab) / (aa + bb - 2.0 * ab)
    return gamma, gamma * gamma * aa + 2 * gamma * (1 - gamma) * ab + (1 - gamma) ** 2 * bb


def min_norm_simplex(m: np.ndarray, max_iter: int = 250, tol: float = 1e-5) -> np.ndarray:
    """Weights w on the simplex minimising w^T m w: Frank-Wolfe from the best pair (MGDA-UB's solver).

    Frank-Wolfe with exact line search, started at the best two-task solution, as in Sener &
    Koltun's min-norm solver (250 iterations, stop when the step moves less than 1e-5). The FW
    point is then polished by solving the KKT system on its support; the polish is kept only if
    it is feasible and optimal, so the answer is exact whenever the support was found.
    """
    k = m.shape[0]
    if k == 1:
        return np.ones(1)
    best, w = np.inf, np.zeros(k)
    for i in range(k):
        for j in range(i + 1, k):
            gamma, cost = _min_norm_pair(m[i, i], m[i, j], m[j, j])
            if cost < best:
                best = cost
                w = np.zeros(k)
                w[i], w[j] = gamma, 1.0 - gamma
    for _ in range(max_iter):
        mw = m @ w
        t = int(np.argmin(mw))
        gamma, _ = _min_norm_pair(float(w @ mw), float(mw[t]), float(m[t, t]))
        new = gamma * w
        new[t] += 1.0 - gamma
        if np.abs(new - w).sum() < tol:
            w = new
            break
        w = new
    return _polish_simplex(m, w)


def _polish_simplex(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact minimiser on the support of ``w`` if it satisfies the KKT conditions, else ``w``."""
    k = m.shape[0]
    support = np.flatnonzero(w > 1e-9)
    s = support.size
    kkt = np.zeros((s + 1, s + 1))
    kkt[:s, :s] = m[np.ix_(support, support)]
    kkt[:s, s] = 1.0
    kkt[s, :s] = 1.0
    rhs = np.zeros(s + 1)
    rhs[s] = 1.0
    sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    cand = np.zeros(k)
    cand[support] = sol[:s]
    if np.any(cand < -1e-12) or abs(cand.sum() - 1.0) > 1e-9:
        return w
    cand = np.clip(cand, 0.0, None)
    cand /= cand.sum()
    value = cand @ m @ cand
    scale = max(np.abs(np.diag(m)).max(), 1e-300)
    if np.all(m @ cand >= value - 1e-9 * scale) and value <= w @ m @ w + 1e-12 * scale:
        return cand
    return w


def cone_projection_weights(m: np.ndarray, u: np.ndarray) -> np.ndarray:
    """v = argmin_{v >= u} v^T m v: the weights of the projection of G^T u onto the dual cone of G.

    With m = G G^T, the projection of G^T u onto {x : G x >= 0} is G^T v (TorchJD's UPGrad
    lemma). Solved exactly as the non-negative least squares problem min_{z >= 0} ||A (u + z)||
    with A^T A = m (Lawson-Hanson active set on a K x K problem).
    """
    a = psd_factor(m)
    z, _ = nnls(a, -(a @ u), maxiter=50 * max(1, m.shape[0]))
    return u + z


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
