"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, CVPR 2023).

Paper: [Independent Component Alignment for Multi-Task Learning](https://arxiv.org/abs/2305.19000), CVPR 2023.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import GramianWeighting, combine_rows
from mtlkit.weighting._solvers import as_numpy, to_tensor
from mtlkit.weighting.gradients import gramian


def balance_transform(gramian: Tensor) -> Tensor:
    """B = sigma_min V Lambda^{-1/2} V^T from G G^T = V Lambda V^T (rank-restricted): B G is aligned.

    B G = sigma_min U W^T for G = U Sigma W^T, so all non-zero singular values of B G equal
    sigma_min, the smallest non-zero singular value of G. Eigenvalues below K * eps * lambda_max
    count as zero (rank deficiency).
    """
    m = as_numpy(gramian)
    k = m.shape[0]
    lam, vec = np.linalg.eigh(m)
    top = float(lam.max()) if lam.size else 0.0
    if top <= 0:
        return to_tensor(np.zeros((k, k)))
    keep = lam > top * k * np.finfo(np.float64).eps
    lam, vec = lam[keep], vec[:, keep]
    sigma_min = float(np.sqrt(lam.min()))
    b = sigma_min * (vec / np.sqrt(lam)[None, :]) @ vec.T
    return to_tensor(b)


def aligned_mtl_weights(gramian: Tensor, preference: Tensor | None = None) -> Tensor:
    """Weights B^T p on the raw rows, so that sum_k w_k g_k = sum_k p_k (B G)_k (p = ones by default)."""
    b = balance_transform(gramian)
    k = b.shape[0]
    p = np.ones(k) if preference is None else preference.double().cpu().numpy()
    return to_tensor(b.numpy().T @ p)


def aligned_mtl(grads: Tensor, preference: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(d, weights): the sum of the aligned task gradients (rows of B G)."""
    w = aligned_mtl_weights(gramian(grads), preference)
    return combine_rows(w, grads), w


@WEIGHTINGS.register("aligned_mtl")
class AlignedMTL(GramianWeighting):
    r"""Aligned-MTL: make the gradient matrix's condition number 1, then sum its rows.

    The rows of $G$ are replaced by those of $B G$, whose singular values all equal $G$'s smallest
    one, $\sigma_{\min}(G)$ (from the eigen-decomposition of the $K \times K$ Gramian $G G^\top$);
    the update is their sum (task preferences 1, the same scale convention as `equal`).

    Options: none.

    Guarantees: the aligned matrix has condition number 1 (all non-zero singular values equal
    $\sigma_{\min}(G)$); with orthogonal task gradients the update is
    $\sigma_{\min} \sum_k g_k / \lVert g_k \rVert$.
    """

    display_name = "Aligned-MTL"

    properties = frozenset({"permutation_equivariant", "sum_when_equal"})

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Aligned-MTL's coefficients on the raw task gradients."""
        return aligned_mtl_weights(gramian)
