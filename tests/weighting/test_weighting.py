"""Weighting classes: loss-level formulas by hand, learned-weight updates, state round trips, and a
few real training steps of every registered method through the trainer's step on a tiny model."""

from __future__ import annotations

import io
import math

import pytest
import torch

from helpers.nets import TinyNet, _batch
from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.weighting import DWA, FAMO, IMTL, IMTLL, MGDA, RLW, GradNorm, NashMTL, Uncertainty, gramian
from mtlkit.weighting.functional import (
    dwa_weights,
    famo_weights,
    gradnorm_targets,
    imtl_g,
    mgda,
    nash_mtl_weights,
    rlw_weights,
)

NAMES = ["a", "b", "c"]

# ---------------------------------------------------------------- loss level, by hand


def test_dwa_formula_by_hand():
    history = [[2.0, 1.0, 4.0], [1.0, 1.0, 2.0]]  # ratios w = (0.5, 1.0, 0.5), T = 2
    expected = [0.913513027260852, 1.172973945478296, 0.913513027260852]  # 3 e^{w/2} / sum e^{w/2}
    assert dwa_weights(history, 2.0) == pytest.approx(expected, rel=1e-12)
    assert dwa_weights(history[:1], 2.0) == [1.0, 1.0, 1.0]
    assert dwa_weights([[1.0, 0.0, 1.0], [1.0, 5.0, 1.0]], 2.0) == pytest.approx([1.0, 1.0, 1.0])


def test_dwa_weights_one_for_two_epochs_then_formula_and_combine():
    dwa = DWA(NAMES)
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert float(dwa.combine(losses)) == pytest.approx(6.0)
    dwa.epoch_end(0, torch.tensor([2.0, 1.0, 4.0]))
    assert float(dwa.combine(losses)) == pytest.approx(6.0)  # still epoch 2: weights 1
    dwa.epoch_end(1, torch.tensor([1.0, 1.0, 2.0]))
    total = dwa.combine(losses)
    w = [0.913513027260852, 1.172973945478296, 0.913513027260852]
    assert float(total) == pytest.approx(w[0] * 1 + w[1] * 2 + w[2] * 3, rel=1e-6)
    assert dwa.last_weights.tolist() == pytest.approx(w, rel=1e-6)
    assert float(dwa.last_weights.sum()) == pytest.approx(3.0)


def test_dwa_history_survives_state_dict_round_trip():
    dwa = DWA(NAMES, temperature=2.0)
    for e, ls in enumerate([[3.0, 2.0, 1.0], [2.0, 2.0, 1.0], [1.0, 1.5, 0.9]]):
        dwa.epoch_end(e, torch.tensor(ls))
    state = _roundtrip(dwa.state_dict())
    fresh = DWA(NAMES)
    fresh.load_state_dict(state)
    assert fresh.history == dwa.history == [[2.0, 2.0, 1.0], [1.0, 1.5, float(torch.tensor(0.9))]]
    losses = torch.tensor([1.0, 1.0, 1.0])
    assert torch.equal(fresh.combine(losses), dwa.combine(losses))


def test_uncertainty_formula_by_hand():
    unc = Uncertainty(["a", "b"])
    with torch.no_grad():
        unc.log_vars.copy_(torch.tensor([-0.5, 0.0]))
    total = unc.combine(torch.tensor([2.0, 1.0]))
    # 1/2 e^{0.5} 2 - 0.5/2 + 1/2 e^0 1 + 0 = e^{0.5} + 0.25
    assert float(total.detach()) == pytest.approx(1.8987212707001282, rel=1e-6)
    total.backward()
    # d/ds_a = -1/2 e^{0.5} 2 + 1/2 ; d/ds_b = -1/2 + 1/2
    assert unc.log_vars.grad.tolist() == pytest.approx([-1.1487212707001282, 0.0], abs=1e-6)
    assert unc.last_weights.tolist() == pytest.approx([0.5 * math.exp(0.5), 0.5], rel=1e-6)


def test_uncertainty_defaults_task_factors_and_absent_tasks():
    unc = Uncertainty(["seg", "depth"], task_factors={"seg": 1.0})
    assert unc.log_vars.tolist() == [-0.5, -0.5]  # the MTAN code's initialisation
    total = unc.combine(torch.tensor([1.0, 0.0]))  # depth absent (placeholder 0)
    assert float(total.detach()) == pytest.approx(math.exp(0.5) - 0.25, rel=1e-6)
    total.backward()
    assert float(unc.log_vars.grad[1]) == 0.0  # no drift of an absent task's s
    with pytest.raises(ConfigError, match="task_factors: unknown task 'x'"):
        Uncertainty(["seg"], task_factors={"x": 1.0})


def test_imtl_l_formula():
    m = IMTLL(["a", "b"])
    with torch.no_grad():
        m.scales.copy_(torch.tensor([math.log(2.0), 0.0]))
    total = m.combine(torch.tensor([3.0, 1.0]))
    assert float(total.detach()) == pytest.approx(2 * 3 - math.log(2.0) + 1, rel=1e-6)
    total.backward()
    assert m.scales.grad.tolist() == pytest.approx([2 * 3 - 1, 0.0], abs=1e-6)


def test_rlw_weights_are_seeded_softmax_of_normals():
    rlw = RLW(NAMES, seed=3)
    total = rlw.combine(torch.tensor([1.0, 2.0, 3.0]))
    expected = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(3)), 0)
    torch.testing.assert_close(rlw.last_weights, expected)
    assert float(total) == pytest.approx(float(expected @ torch.tensor([1.0, 2.0, 3.0])))
    torch.testing.assert_close(rlw_weights(3, torch.Generator().manual_seed(3)), expected)


def test_famo_weights_and_logit_update_by_hand():
    famo = FAMO(["a", "b"], lr=0.025, gamma=0.0)
    losses = torch.tensor([2.0, 0.5], requires_grad=True)
    total = famo.combine(losses)
    # z = (1/2, 1/2); z / L = (1/4, 1); normalised: (0.2, 0.8)
    assert famo.last_weights.tolist() == pytest.approx([0.2, 0.8], rel=1e-6)
    total.backward()
    assert losses.grad.tolist() == pytest.approx([0.2, 0.8], rel=1e-6)
    famo.combine(torch.tensor([1.0, 0.5]))  # task a's log-loss dropped by log 2, b's by 0
    # gradient z (delta - z.delta) = (+, -) log(2)/4; first Adam step moves each logit by lr
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)
    w = famo_weights(famo.logits, torch.tensor([1.0, 1.0]), torch.zeros(2))
    assert w.tolist() == pytest.approx(torch.softmax(torch.tensor([-0.025, 0.025]), 0).tolist(), rel=1e-6)


# ---------------------------------------------------------------- gradient level classes


def test_mgda_class_uses_normalised_min_norm_point():
    g = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    losses = torch.tensor([2.0, 4.0])
    for norm in ("none", "l2", "loss", "loss+"):
        method = MGDA(["a", "b"], normalization=norm)
        d = method.aggregate(g, losses)
        ref, w = mgda(g.double(), normalization=norm, losses=losses)
        torch.testing.assert_close(d, ref.float())
        torch.testing.assert_close(method.last_weights, w.float())
        assert torch.all(g @ d >= 0)
    with pytest.raises(ConfigError, match="normalization"):
        MGDA(["a", "b"], normalization="max")


def test_gradnorm_weight_gradient_and_renormalisation_by_hand():
    gn = GradNorm(["a", "b"], alpha=1.5)
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    d = gn.aggregate(g, torch.tensor([1.0, 1.0]))  # first step: L(0) = (1, 1), r = (1, 1)
    torch.testing.assert_close(d, torch.tensor([2.0, 1.0]))
    # targets mean(2, 1) = 1.5; grad sign(w n - 1.5) n = (+2, -1)
    assert gn.weights.grad.tolist() == [2.0, -1.0]
    with torch.no_grad():
        gn.weights.copy_(torch.tensor([0.8, 1.4]))
    gn.weights.grad = None
    d = gn.aggregate(g, torch.tensor([0.5, 1.0]))
    w = [0.8 * 2 / 2.2, 1.4 * 2 / 2.2]  # renormalised to sum K = 2
    assert gn.last_weights.tolist() == pytest.approx(w, rel=1e-6)
    torch.testing.assert_close(d, torch.tensor([2 * w[0], w[1]]))
    # r = (0.5, 1) / 0.75; targets = mean(2 w0, w1) r^1.5
    mean = (2 * w[0] + w[1]) / 2
    targets = [mean * (0.5 / 0.75) ** 1.5, mean * (1 / 0.75) ** 1.5]
    got = gradnorm_targets(
        torch.tensor([2 * w[0], w[1]], dtype=torch.float64),
        torch.tensor([0.5, 1.0], dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
        1.5,
    )
    assert got.tolist() == pytest.approx(targets, rel=1e-9)
    expected = [2.0 * math.copysign(1, 2 * w[0] - targets[0]), math.copysign(1, w[1] - targets[1])]
    assert gn.weights.grad.tolist() == pytest.approx(expected)


def test_imtl_hybrid_scales_gradients_and_writes_scale_gradient():
    m = IMTL(["a", "b"])
    with torch.no_grad():
        m.scales.copy_(torch.tensor([math.log(2.0), 0.0]))
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    d = m.aggregate(g, torch.tensor([3.0, 0.5]))
    ref, _ = imtl_g(torch.stack([2 * g[0], g[1]]).double())
    torch.testing.assert_close(d, ref.float())
    assert m.scales.grad.tolist() == pytest.approx([2 * 3 - 1, 0.5 - 1], rel=1e-6)


def test_nash_class_follows_authors_normalisation_and_clip():
    """The authors' update has norm sqrt(K) before the clip at any gradient scale (their division
    of G G^T by its Frobenius norm cancels in the constraint): checked at scales 1e-3 and 1e3."""
    g = torch.tensor([[0.3, 0.0, 0.1], [0.0, 0.2, -0.1], [0.1, 0.1, 0.4]])
    for scale in (1e-3, 1.0, 1e3):
        gs = scale * g
        nash = NashMTL(NAMES, max_norm=0.0)
        d = nash.aggregate(gs, torch.ones(3))
        m = gramian(gs.double())
        alpha = nash.last_weights.double()
        # alpha_k (G G^T alpha)_k = 1 (float32 weights: rounding 6e-8 relative, times K terms)
        torch.testing.assert_close(alpha * (m @ alpha), torch.ones(3, dtype=torch.float64), rtol=1e-6, atol=0)
        assert float(d.double().norm()) == pytest.approx(3**0.5, rel=1e-6)
        assert float(NashMTL(NAMES).aggregate(gs, torch.ones(3)).double().norm()) == pytest.approx(1.0, rel=1e-6)
    variant = NashMTL(NAMES, normalize=True, max_norm=0.0)
    variant.aggregate(g, torch.ones(3))
    m = gramian(g)
    ref = nash_mtl_weights(m, normalize=True)
    torch.testing.assert_close(variant.last_weights, ref.float())
    fro = float(torch.linalg.matrix_norm(m))
    torch.testing.assert_close(ref * (m @ ref), torch.full((3,), fro, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_gradient_methods_reject_wrong_matrix_shape():
    with pytest.raises(ValueError, match="3 x D"):
        WEIGHTINGS.get("pcgrad")(NAMES).aggregate(torch.zeros(2, 4), torch.ones(2))


def test_option_errors_are_config_errors():
    for name, options in [
        ("dwa", {"temperature": 0}),
        ("cagrad", {"c": -1}),
        ("cagrad", {"rescale": 5}),
        ("graddrop", {"leak": 2}),
        ("gradvac", {"beta": 0}),
        ("rlw", {"seed": "x"}),
        ("db_mtl", {"beta": 1.0}),
        ("gradnorm", {"alpha": -1}),
    ]:
        with pytest.raises(ConfigError, match="weighting.options"):
            WEIGHTINGS.get(name)(NAMES, **options)


# ---------------------------------------------------------------- every registered method


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _drive(method, steps: int, seed: int) -> list[torch.Tensor]:
    """Feed ``steps`` steps of fixed pseudo-random losses / gradients; return the outputs."""
    gen = torch.Generator().manual_seed(seed)
    outs = []
    for step in range(steps):
        losses = torch.rand(3, generator=gen) + 0.5
        if method.needs_gradients:
            g = torch.randn(3, 7, generator=gen)
            for p in method.parameters():
                p.grad = None
            outs.append(method.aggregate(g, losses).detach().clone())
        else:
            outs.append(method.combine(losses.clone().requires_grad_(True)).detach().clone())
        outs.append(method.last_weights.detach().clone())
        if step % 2 == 1:
            method.epoch_end(step // 2, losses)
    return outs


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_method_state_dict_round_trips(name):
    cls = WEIGHTINGS.get(name)
    first = cls(NAMES)
    _drive(first, 4, seed=0)
    state = _roundtrip(first.state_dict())
    second = cls(NAMES)
    second.load_state_dict(state)
    a, b = _drive(first, 4, seed=1), _drive(second, 4, seed=1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert all(torch.isfinite(x).all() for x in a)


@pytest.mark.parametrize("mode", ["parameters", "representation"])
@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_method_trains_a_tiny_model_through_the_step(name, mode):
    from mtlkit.train.step import StepRunner

    tasks = [segmentation_task(3, "seg"), depth_task("depth"), normal_task("normal")]
    torch.manual_seed(0)
    model = TinyNet(tasks)
    method = WEIGHTINGS.get(name)([t.name for t in tasks])
    params = list(model.parameters()) + [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    if method.needs_gradients and mode == "representation" and not method.supports_representation:
        with pytest.raises(ConfigError, match="representation"):
            StepRunner(model, method, tasks, opt, mode)
        return
    runner = StepRunner(model, method, tasks, opt, mode)
    batch = _batch()
    totals = []
    for _ in range(30):
        losses = runner(batch)
        assert torch.isfinite(losses).all()
        assert torch.isfinite(method.last_weights).all()
        totals.append(float(losses.sum()))
    assert sum(totals[-3:]) < sum(totals[:3]), totals
