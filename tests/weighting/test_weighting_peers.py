"""mtlkit's gradient methods against TorchJD 0.18 (the ``peers`` extra) on the same matrices.

Each comparison normalises only a documented convention, written next to it: a factor K (mtlkit
sums where TorchJD averages), TorchJD's QP ridge (its dual-cone solver works on G G^T / tr + 1e-4 I;
mtlkit's solver is exact, so mtlkit is given the same ridged Gramian), option values (mtlkit's
defaults follow the authors' experiments, TorchJD's its own) and seeds (the same torch seed gives
the same draws where both draw the same tensor). Tolerances: float64 rounding (1e-12 relative)
where both compute the same closed form or finite algorithm; the peer's stopping rule where the
peer iterates (MGDA's Frank-Wolfe, CAGrad's and Nash-MTL's convex solvers).

Nash-MTL is compared at scale 1 only: at gradients of 1e-3 TorchJD's ECOS solve returns a point
off the Nash fixed point (mtlkit's update, scale-free as the authors', is checked at 1e-3 and 1e3
against the fixed-point condition in test_weighting.py).

Where TorchJD departs from the paper the test says so and checks mtlkit against the paper's formula:
- Krum: TorchJD scores a row by the sum of its distances to its nearest neighbours; the paper
  (Blanchard et al., 2017) by the sum of squared distances.
- ExcessMTL: TorchJD updates the weights on the first call from the raw excess risk; the paper
  (and mtlkit) divides by the first step's risk, so the first update is the equal one.

Not compared, and why:
- Random orders: PCGrad with the same seed draws the same permutations (compared for K = 4).
  GradVac draws a permutation of the K - 1 other tasks in TorchJD and of all K in mtlkit, so the
  orders cannot be aligned for K >= 3 (compared for K = 2, where there is one order).
- MoDo and SDMGrad take TorchJD's A = J1 J2^T from two batches; on one batch A is the Gramian,
  which is what is compared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

tj = pytest.importorskip("torchjd.aggregation", reason="the peers extra (pip install -e .[peers])")
pytest.importorskip("quadprog", reason="TorchJD's dual-cone projector needs quadprog")

from torchjd.linalg import QuadprogProjector  # noqa: E402

from mtlkit.registry import WEIGHTINGS  # noqa: E402
from mtlkit.weighting._common import exact_gramian  # noqa: E402
from mtlkit.weighting.functional import dualproj_weights, krum_weights, upgrad_weights  # noqa: E402

ROUNDING = 1e-12


def _matrices() -> list[torch.Tensor]:
    """Random K x D matrices (K = 2..6), one with a conflict-heavy hand-made structure."""
    gen = torch.Generator().manual_seed(21)
    out = [torch.randn(k, d, generator=gen, dtype=torch.float64) for k, d in [(2, 5), (3, 7), (4, 6), (5, 9), (6, 4)]]
    out.append(torch.tensor([[1.0, 0.0, 0.5], [-0.8, 1.0, 0.0], [0.2, -0.6, 1.0]], dtype=torch.float64))
    return out


MATRICES = _matrices()


def _ours(name: str, g: torch.Tensor, **options) -> torch.Tensor:
    """mtlkit's update for ``g`` (fresh instance, unit losses), in float64."""
    method = WEIGHTINGS.get(name)([f"t{i}" for i in range(g.shape[0])], **options)
    return method.aggregate(g.clone(), torch.ones(g.shape[0], dtype=torch.float64)).double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm()) / max(float(b.norm()), 1e-300)


@pytest.mark.parametrize("g", MATRICES, ids=lambda g: f"{g.shape[0]}x{g.shape[1]}")
def test_closed_forms_and_exact_solvers_agree(g):
    k = g.shape[0]
    # mean / sum: mtlkit's equal weighting sums the task losses (TorchJD Sum); Mean = Sum / K
    assert _rel(g.sum(0), tj.Sum()(g)) < ROUNDING
    # IMTL-G (full row rank, K <= D: for K > D mtlkit returns 0, TorchJD a pseudo-inverse), ConFIG:
    # same closed forms, same conventions
    if k <= g.shape[1]:
        assert _rel(_ours("imtl_g", g), tj.IMTLG()(g)) < 1e-10
    assert _rel(_ours("config", g), tj.ConFIG()(g)) < ROUNDING
    # Aligned-MTL: convention K (mtlkit sums the aligned rows, TorchJD averages them)
    assert _rel(_ours("aligned_mtl", g), k * tj.AlignedMTL()(g)) < 1e-10
    # UPGrad, DualProj: TorchJD's QP ridge (G G^T / tr + 1e-4 I) given to mtlkit's exact solver;
    # quadprog solves to ~1e-12
    m = exact_gramian(g)
    ridged = m / m.trace() + 1e-4 * torch.eye(k, dtype=torch.float64)
    projector = QuadprogProjector(reg_eps=1e-4)
    assert _rel(upgrad_weights(ridged) @ g, tj.UPGrad(projector=projector)(g)) < 1e-10
    assert _rel(dualproj_weights(ridged) @ g, tj.DualProj(projector=projector)(g)) < 1e-10
    # ... and without the ridge (TorchJD at reg_eps 1e-12): mtlkit's own update, to the ridge's effect
    assert _rel(_ours("upgrad", g), tj.UPGrad(projector=QuadprogProjector(reg_eps=1e-12))(g)) < 1e-9
    # FairGrad (alpha = 1): both solve (G G^T) w = w^(-1/alpha) to ~1e-14
    assert _rel(_ours("fairgrad", g, alpha=1.0), tj.FairGrad(alpha=1.0)(g)) < 1e-9
    # TrimmedMean: same coordinate-wise trimmed mean (trim 1 from each side), K >= 3
    if k >= 3:
        assert _rel(_ours("trimmed_mean", g, trim=1), tj.TrimmedMean(trim_number=1)(g)) < ROUNDING


@pytest.mark.slow
@pytest.mark.parametrize("g", MATRICES, ids=lambda g: f"{g.shape[0]}x{g.shape[1]}")
def test_mgda_is_at_least_as_optimal_as_torchjd_frank_wolfe(g):
    """Convention: normalization "none" (TorchJD's MGDA has no normaliser). TorchJD runs Frank-Wolfe
    to a step of 1e-12; the min-norm point d* satisfies |p - d*|^2 <= |p|^2 - |d*|^2 for every p in
    the hull, so TorchJD's point p bounds how far mtlkit's may be from it."""
    ours = _ours("mgda", g, normalization="none")
    peer = tj.MGDA(epsilon=1e-12, max_iters=100000)(g)
    gap = float(peer @ peer - ours @ ours)
    scale = float(g.norm(dim=1).max()) ** 2
    assert gap >= -ROUNDING * scale  # mtlkit's point is the shorter (the optimum)
    assert float((peer - ours) @ (peer - ours)) <= gap + ROUNDING * scale


@pytest.mark.parametrize("g", MATRICES, ids=lambda g: f"{g.shape[0]}x{g.shape[1]}")
def test_iterative_solvers_agree_to_their_tolerance(g):
    # CAGrad: convention rescale 0 (TorchJD returns g0 + c |g0| g_w / |g_w| unscaled); both solve the
    # dual numerically (mtlkit SLSQP at ftol 1e-14, TorchJD an SVD-based reformulation), 1e-4
    assert _rel(_ours("cagrad", g, c=0.4, rescale=0), tj.CAGrad(c=0.4, norm_eps=0.0)(g)) < 1e-4
    # Nash-MTL: the authors' normalisation (mtlkit's default), max_norm 1, full row rank (K <= D:
    # otherwise there is no Nash solution and the two regularise differently). TorchJD runs the
    # authors' 20 CCP iterations (cvxpy/ECOS, stop at |G G^T a - 1/a| < 1e-3 on the normalised
    # Gramian), mtlkit Newton to 1e-10: agreement to TorchJD's 1e-3 stop. At scale 1e-3 (Gramian
    # ~1e-6) TorchJD's ECOS solve returns a point off the fixed point, so scale 1 only.
    pytest.importorskip("cvxpy", reason="TorchJD's Nash-MTL needs cvxpy")
    if g.shape[0] <= g.shape[1]:
        assert _rel(_ours("nash_mtl", g), tj.NashMTL(n_tasks=g.shape[0])(g)) < 1e-3


def test_seeded_random_methods_draw_the_same():
    """Convention: seeds. The same torch seed gives the same normal draws (random loss weighting:
    softmax of K normals) and the same permutations (PCGrad's projection order)."""
    g = MATRICES[2]
    for seed in range(3):
        rlw = WEIGHTINGS.get("rlw")(["a", "b", "c", "d"], seed=seed)
        rlw.combine(torch.ones(4, requires_grad=True))
        torch.manual_seed(seed)
        peer = tj.RandomWeighting()(g)
        np.testing.assert_allclose(rlw.last_weights.double().numpy(), peer.numpy(), rtol=1e-6)  # float32 weights
        ours = _ours("pcgrad", g, seed=seed)
        torch.manual_seed(seed)
        assert _rel(ours, tj.PCGrad()(g)) < ROUNDING


def test_graddrop_with_the_same_seed():
    """Convention: seed, float32 (both draw U ~ U(0, 1)^D in the matrix's dtype); leak 0."""
    g = MATRICES[3].float()
    for seed in range(3):
        ours = _ours("graddrop", g, seed=seed).float()
        torch.manual_seed(seed)
        peer = tj.GradDrop()(g)
        torch.testing.assert_close(ours, peer, rtol=1e-6, atol=1e-6)


def test_gradvac_two_tasks_over_steps():
    """Convention: beta 0.5 given to both (TorchJD's default; mtlkit's 1e-2 is the authors'), K = 2
    (one order), TorchJD's eps 1e-8 in two denominators (relative effect 1e-8)."""
    gen = torch.Generator().manual_seed(5)
    ours = WEIGHTINGS.get("gradvac")(["a", "b"], beta=0.5)
    peer = tj.GradVac(beta=0.5)
    for _ in range(4):
        g = torch.randn(2, 6, generator=gen, dtype=torch.float64)
        d = ours.aggregate(g.clone(), torch.ones(2, dtype=torch.float64)).double()
        assert _rel(d, peer(g)) < 1e-7


def test_sdmgrad_and_modo_weights_on_the_gramian():
    """Convention: A = G G^T (one batch). SDMGrad: lam 0.3, lr 10, 20 steps, momentum 0.5 in both
    (the authors' values). MoDo: gamma 0.1 and rho 0.1 given to both (TorchJD's defaults; mtlkit's
    gamma 1e-3 is LibMTL's). Both are stateful: compared over 3 calls."""
    from mtlkit.weighting.functional import modo_step, sdmgrad_inner, sdmgrad_weights

    gen = torch.Generator().manual_seed(9)
    sd, md = tj.SDMGradWeighting(), tj.MoDoWeighting(gamma=0.1, rho=0.1)
    w, lam = np.full(4, 0.25), np.full(4, 0.25)
    for _ in range(3):
        g = torch.randn(4, 7, generator=gen, dtype=torch.float64)
        m = exact_gramian(g)
        w = sdmgrad_inner(m, w)
        np.testing.assert_allclose(sdmgrad_weights(w).numpy(), sd(m).numpy(), rtol=1e-10, atol=1e-12)
        lam = modo_step(m, lam, gamma=0.1, rho=0.1)
        np.testing.assert_allclose(lam, md(m).numpy(), rtol=1e-10, atol=1e-12)


def test_krum_against_the_paper_where_torchjd_sums_distances():
    """TorchJD's Krum sums distances; the paper sums squared distances. On this matrix the two pick
    different rows: mtlkit matches a by-hand paper score, TorchJD a by-hand sum of distances."""
    # scores with f = 1 (2 nearest): squared 19, 25, 26, 31, 18 (row 4); distances 5.24 (row 0), 6.71, 6, 7.85, 5.84
    g = torch.tensor([[2.0, 3.0], [1.0, -4.0], [2.0, 4.0], [-1.0, 0.0], [2.0, -2.0]], dtype=torch.float64)
    f = 1
    n_near = g.shape[0] - f - 2
    dist = torch.cdist(g, g)
    nearest = dist.sort(dim=1).values[:, 1 : n_near + 1]
    paper = int((nearest**2).sum(1).argmin())
    summed = int(nearest.sum(1).argmin())
    assert paper != summed  # the matrix separates the two scores
    w = krum_weights(exact_gramian(g), n_byzantine=f)
    assert int(w.argmax()) == paper and float(w.sum()) == pytest.approx(1.0)
    peer = tj.Krum(n_byzantine=f)(g)
    assert _rel(peer, g[summed]) < ROUNDING


def test_excess_mtl_against_the_paper_where_torchjd_updates_on_the_first_call():
    """TorchJD updates on its first call from the raw excess risk r_1 (softmax(eta r_1)); the paper
    divides every risk by the first step's, so the first update is the equal one (mtlkit). After
    that both apply w <- w exp(eta r_t / r_1): TorchJD's weights divided by its first-call factor
    exp(eta r_1), renormalised, equal mtlkit's / K (convention: sum K vs sum 1; TorchJD adds 1e-7 to
    r_1, a relative effect ~1e-7 / r_1)."""
    from mtlkit.weighting.functional import excess_risks

    gen = torch.Generator().manual_seed(11)
    eta = 0.5
    ours = WEIGHTINGS.get("excess_mtl")(["a", "b", "c"], step_size=eta)
    peer = tj.ExcessMTLWeighting(robust_step_size=eta)
    first = None
    for step in range(4):
        g = torch.randn(3, 8, generator=gen, dtype=torch.float64)
        ours.aggregate(g.clone(), torch.ones(3, dtype=torch.float64))
        w_peer = peer(g)
        if step == 0:
            first = excess_risks(g, g * g)
            assert ours.loss_weights.tolist() == [1.0, 1.0, 1.0]  # the paper: no update from r_1 / r_1
            np.testing.assert_allclose(w_peer.numpy(), torch.softmax(eta * first, 0).numpy(), rtol=1e-12)
            continue
        undone = w_peer / torch.exp(eta * first)
        undone = undone / undone.sum()
        np.testing.assert_allclose(undone.numpy(), (ours.loss_weights / 3).numpy(), rtol=1e-5)
        assert math.isclose(float(ours.loss_weights.sum()), 3.0, rel_tol=1e-12)
