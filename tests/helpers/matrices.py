"""Test matrices for the gradient methods: TorchJD's four families (normal of a given rank, strongly
stationary, strictly weakly stationary, not weakly stationary) plus low-rank, near-duplicate and
badly scaled rows. Written from the definitions in TorchJD's test suite (Quinton & Rey, 2024); the
samplers are ours, so the draws are not TorchJD's.

Definitions (rows g_k of an m x n matrix G): G is *strongly stationary* when some v > 0 has
v^T G = 0 (Pareto stationary with every task involved), *weakly stationary* when some v >= 0,
v != 0 does, and *strictly weakly* when weakly but not strongly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _orthonormal(n: int, gen: torch.Generator) -> Tensor:
    """A Haar-random n x n orthogonal matrix (QR of a Gaussian with the signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _complete(columns: Tensor, gen: torch.Generator) -> Tensor:
    """An orthonormal m x m basis whose first columns span ``columns`` (orthonormal, m x c)."""
    m, c = columns.shape
    q, _ = torch.linalg.qr(torch.cat([columns, torch.randn(m, m - c, generator=gen, dtype=torch.float64)], 1))
    q[:, :c] = columns
    return q


def _factor(left: Tensor, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """left[:, :rank] diag(|N(0,1)|) V[:rank] with V a random orthogonal n x n matrix."""
    s = torch.randn(rank, generator=gen, dtype=torch.float64).abs()
    return left[:, :rank] @ torch.diag(s) @ _orthonormal(n, gen)[:rank]


def normal(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """A random m x n matrix of the given rank."""
    return _factor(_orthonormal(m, gen), n, rank, gen)


def strongly_stationary(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """Rows orthogonal to a positive v: v^T G = 0 with v > 0 (rank <= m - 1)."""
    v = torch.randn(m, generator=gen, dtype=torch.float64).abs()
    basis = _complete((v / v.norm())[:, None], gen)
    return _factor(basis[:, 1:], n, rank, gen)


def strictly_weakly_stationary(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """v^T G = 0 for a v >= 0 with zeros, and a non-negative left singular vector v' (disjoint
    support, positive singular value) rules out any positive v (rank <= m - 1)."""
    u = torch.randn(m, generator=gen, dtype=torch.float64).abs()
    split = int(torch.randint(1, m, (), generator=gen))
    order = torch.randperm(m, generator=gen)
    v, w = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    v[order[:split]] = u[order[:split]] / u[order[:split]].norm()
    w[order[split:]] = u[order[split:]] / u[order[split:]].norm()
    basis = _complete(torch.stack([v, w], 1), gen)
    return _factor(basis[:, 1:], n, rank, gen)


def not_weakly_stationary(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """A positive left singular vector with a positive singular value: no v >= 0, v != 0 has v^T G = 0."""
    u = torch.randn(m, generator=gen, dtype=torch.float64).abs()
    return _factor(_complete((u / u.norm())[:, None], gen), n, rank, gen)


def torchjd_like(gen: torch.Generator) -> list[Tensor]:
    """The shapes of TorchJD's 24 'typical' matrices: 3 zero, 6 normal, 5 strongly, 5 strictly weakly
    and 5 not weakly stationary ones (float64; cast them for float32 checks)."""
    out = [torch.zeros(m, n, dtype=torch.float64) for m, n in [(1, 1), (4, 3), (9, 11)]]
    out += [normal(m, n, r, gen) for m, n, r in [(1, 1, 1), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9)]]
    stationary = [(20, 10, 10), (20, 10, 5), (20, 10, 1), (20, 100, 1), (20, 100, 19)]
    out += [strongly_stationary(m, n, min(r, m - 1), gen) for m, n, r in stationary]
    out += [strictly_weakly_stationary(m, n, min(r, m - 1), gen) for m, n, r in stationary]
    out += [not_weakly_stationary(m, n, r, gen) for m, n, r in stationary]
    return out


def random_cases(count: int, seed: int) -> list[tuple[str, Tensor]]:
    """``count`` (kind, K x D float64 matrix) pairs, K in 3..20, cycling through the families above,
    low-rank products, rows with norms spread over e^(+-4), and near-duplicate rows (g1 = g0 (1 +
    1e-7), g2 = g0 + 1e-6 noise)."""
    gen = torch.Generator().manual_seed(seed)
    kinds = ["scaled", "low_rank", "normal", "strong", "not_weak", "near_duplicate", "strictly_weak"]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        m = int(torch.randint(3, 21, (), generator=gen))
        n = int(torch.randint(m // 2 + 2, 3 * m, (), generator=gen))
        rank = int(torch.randint(1, min(m - 1, n) + 1, (), generator=gen))
        if kind == "scaled":
            g = torch.randn(m, n, generator=gen, dtype=torch.float64)
            g = g * torch.exp(2 * torch.randn(m, 1, generator=gen, dtype=torch.float64))
        elif kind == "low_rank":
            g = torch.randn(m, rank, generator=gen, dtype=torch.float64) @ torch.randn(
                rank, n, generator=gen, dtype=torch.float64
            )
        elif kind == "normal":
            g = normal(m, n, rank, gen)
        elif kind == "strong":
            g = strongly_stationary(m, n, rank, gen)
        elif kind == "not_weak":
            g = not_weakly_stationary(m, n, rank, gen)
        elif kind == "strictly_weak":
            g = strictly_weakly_stationary(m, n, rank, gen)
        else:
            g = torch.randn(m, n, generator=gen, dtype=torch.float64)
            g[1] = g[0] * (1 + 1e-7)
            g[2] = g[0] + 1e-6 * torch.randn(n, generator=gen, dtype=torch.float64)
        out.append((kind, g))
    return out
