"""Every registered method, on steps without a task, against its definition: the method on the present tasks alone.

``Weighting.only`` promises that a step without some tasks (no label in the batch) runs the method
"as it would on those tasks alone", with absent tasks weighted 0, given no gradient, and their
per-task state left as it is. The reference here is the same method built for the present tasks
only, fed the same losses; a method with K tasks whose task ``b`` is absent from every step must
then follow it step for step (updates, weights, gradients of its learned weights).

Tolerances: inputs are float64. The restriction rounds a per-task state vector once more than the
method alone does (a share rescaled to the present tasks' sum or mass); in a float64 state that is
1e-16 per step, hence the relative 1e-9 with a wide margin over 7 steps. A method that keeps its
weights in float32 (DWA, uncertainty, FAMO, GradNorm, IMTL: their state's dtype says so) rounds them
to 2 eps32 each, so its update may differ by up to 2 eps32 sum_k |w_k| |g_k|, compounded through
theta over the steps: the bound is 64 eps32 sum_k |w_k| max|g_k|. A method that treated ``b`` as a
zero gradient or moved its state would differ at O(1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from mtlkit.balance import Balancer
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting import FAMO, Krum, TrimmedMean
from mtlkit.weighting.base import Weighting

D = 6  # shared parameters
STEPS = 7  # more than STCH's 5 warm-up epochs, so its nadir phase runs too
RTOL = 1e-9


def _names(k: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(k)]


def _num_tasks(name: str) -> int:
    """K for the comparison: one more than the method needs, so the K - 1 present tasks are enough for it."""
    return max(3, WEIGHTINGS.get(name).min_tasks + 1)


def _losses(theta: Tensor, step: int, names: list[str]) -> dict[str, Tensor]:
    """Task k's loss at a step: a fixed positive quadratic in theta, different per task and per step."""
    out = {}
    for n in names:
        gen = torch.Generator().manual_seed(1000 * step + ord(n))
        a = torch.randn(D, D, generator=gen, dtype=torch.float64)
        y = torch.randn(D, generator=gen, dtype=torch.float64)
        out[n] = ((a @ theta - y) ** 2).mean() + 0.5
    return out


def _float32_state(method: Weighting) -> bool:
    """True when the method keeps some per-task floating state in float32 (its weights are rounded to it)."""
    state = [t for k, t in method.named_buffers() if k != "last_weights" and t.is_floating_point()]
    return any(t.dtype == torch.float32 for t in [*state, *method.parameters()])


def _atol(method: Weighting, weights: Tensor, losses: dict[str, Tensor], theta: Tensor) -> float:
    """The module docstring's bound on the update's difference for a float32 state; 1e-12 for a float64 one."""
    if not _float32_state(method):
        return 1e-12
    grads = [torch.autograd.grad(v, theta, retain_graph=True)[0] for v in losses.values()]
    scale = sum(abs(float(w)) * float(g.abs().max()) for w, g in zip(weights.tolist(), grads))
    return 64 * torch.finfo(torch.float32).eps * scale


def _step(method: Weighting, theta: Tensor, losses: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(shared update, K task weights, gradients of the method's own parameters) of one Balancer step."""
    theta.grad = None
    for p in method.parameters():
        p.grad = None
    balancer = Balancer(method)
    balancer.backward(losses, [theta] if method.needs_gradients else None)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in method.parameters()]
    assert theta.grad is not None
    return theta.grad.clone(), method.last_weights.detach().clone(), grads


@pytest.mark.parametrize("name", sorted(WEIGHTINGS.names()))
def test_a_step_without_a_task_is_the_method_on_the_present_tasks_alone(name: str) -> None:
    k = _num_tasks(name)
    names = _names(k)
    present = [n for n in names if n != "b"]
    full = WEIGHTINGS.get(name)(names)
    alone = WEIGHTINGS.get(name)(present)
    theta_full = torch.linspace(-1, 1, D, dtype=torch.float64).requires_grad_(True)
    theta_alone = theta_full.detach().clone().requires_grad_(True)
    for step in range(STEPS):
        d_full, w_full, g_full = _step(full, theta_full, _losses(theta_full, step, present))
        d_alone, w_alone, g_alone = _step(alone, theta_alone, _losses(theta_alone, step, present))
        where = f"{name}, step {step}"
        atol = _atol(alone, w_alone, _losses(theta_alone, step, present), theta_alone)
        torch.testing.assert_close(d_full, d_alone, rtol=RTOL, atol=atol, msg=lambda m, where=where: f"{where}: {m}")
        assert float(w_full[1]) == 0.0, where
        torch.testing.assert_close(
            w_full[[i for i, n in enumerate(names) if n != "b"]].double(),
            w_alone.double(),
            rtol=1e-6,
            atol=0,
            msg=where,
        )  # last_weights are float32
        for gf, ga in zip(g_full, g_alone):  # learned per-task weights: the absent task's entry gets no gradient
            assert float(gf[1]) == 0.0, where
            torch.testing.assert_close(
                gf[[i for i in range(k) if i != 1]],
                ga,
                rtol=1e-6,
                atol=1e-12,
                msg=lambda m, where=where: f"{where}: {m}",
            )
        mean = [float(v) for v in _losses(theta_full.detach(), step, present).values()]
        full.epoch_end(step, torch.tensor([math.nan if n == "b" else mean.pop(0) for n in names]))
        alone.epoch_end(step, torch.tensor([float(v) for v in _losses(theta_alone.detach(), step, present).values()]))
        with torch.no_grad():  # move theta, so the next step's gradients differ
            theta_full -= 0.05 * d_full
            theta_alone -= 0.05 * d_alone


def _per_task_entries(method: Weighting) -> dict[str, Any]:
    """Every piece of the method's state with one entry per task (first dimension K), by name."""
    k = method.all_tasks
    out: dict[str, Any] = {}
    for key, value in method.state_dict().items():
        if key.endswith("_extra_state") and isinstance(value, dict):
            for sub, v in value.items():
                if (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == k) or (isinstance(v, list) and len(v) == k):
                    out[f"{key}.{sub}"] = v
        elif isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == k:
            out[key] = value
    return out


def _entry(value: Any, i: int) -> Tensor:
    """Task i's part of a per-task state: its row, and its column too for a K x K matrix (pair statistics)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() == 2 and t.shape[0] == t.shape[1]:
        return torch.cat([t[i], t[:, i]])
    return t[i].reshape(-1)


#: state that is, by its definition, about the last step only (a task absent from it has no entry there)
LAST_STEP_ONLY = {"famo": {"prev_losses"}}


@pytest.mark.parametrize("name", sorted(WEIGHTINGS.names()))
def test_an_absent_task_keeps_its_state(name: str) -> None:
    """After two steps with every task, a step without b leaves b's entries of every per-task state unchanged."""
    names = _names(_num_tasks(name))
    method = WEIGHTINGS.get(name)(names)
    theta = torch.linspace(-1, 1, D, dtype=torch.float64).requires_grad_(True)
    for step in range(2):
        _step(method, theta, _losses(theta, step, names))
        with torch.no_grad():
            theta -= 0.05 * theta.grad
    before = {key: _entry(v, 1).clone() for key, v in _per_task_entries(method).items()}
    _step(method, theta, _losses(theta, 2, [n for n in names if n != "b"]))
    after = {key: _entry(v, 1) for key, v in _per_task_entries(method).items()}
    assert before.keys() == after.keys()
    for key in before:
        if key in LAST_STEP_ONLY.get(name, set()):
            continue
        torch.testing.assert_close(
            after[key], before[key], rtol=1e-12, atol=0, equal_nan=True, msg=lambda m, key=key: f"{name}: {key}: {m}"
        )


@pytest.mark.parametrize("name", ["sdmgrad", "modo", "moco", "go4align"])
def test_simplex_weights_stay_on_the_simplex_and_absent_weights_stay(name: str) -> None:
    """The simplex-kept weights: a step without b moves a and c within the mass they held."""
    method = WEIGHTINGS.get(name)(["a", "b", "c"])
    state = {"sdmgrad": "w", "modo": "lam", "moco": "lam", "go4align": "probs"}[name]
    getattr(method, state).copy_(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    theta = torch.linspace(-1, 1, D, dtype=torch.float64).requires_grad_(True)
    _step(method, theta, _losses(theta, 0, ["a", "c"]))
    w = getattr(method, state)
    assert float(w[1]) == 0.3
    assert float(w[0] + w[2]) == pytest.approx(0.7, rel=1e-12)
    assert float(w.sum()) == pytest.approx(1.0, rel=1e-12)


def test_famo_updates_only_logits_of_tasks_present_in_both_steps() -> None:
    """FAMO measures a task's loss drop over one step: a task absent from either step's batch keeps its logit."""
    famo = FAMO(["a", "b", "c"])
    x = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    Balancer(famo).backward({"a": x[0] * 1.0, "b": x[1] * 1.0, "c": x[2] * 1.0})
    Balancer(famo).backward({"a": x[0] * 0.5, "c": x[2] * 0.9})  # b absent: a and c dropped
    logits = famo.logits.clone()
    assert float(logits[1]) == 0.0 and float(logits[0]) != 0.0 and float(logits[2]) != 0.0
    # the drop a, c: log 2 - log 1 and log 4 - log 3.6; the softmax Jacobian of the two logits alone (both 0)
    delta = torch.tensor([math.log(2.0) - math.log(1.0), math.log(4.0) - math.log(3.6)])
    z = torch.full((2,), 0.5)
    grad = z * (delta - (z * delta).sum())  # + gamma * logits = 0 at the first update
    # Adam's first step moves each logit by lr * sign(grad) (m_hat / sqrt(v_hat) = grad / |grad|)
    expected = -0.025 * torch.sign(grad)
    torch.testing.assert_close(logits[[0, 2]], expected, rtol=1e-5, atol=1e-7)
    Balancer(famo).backward({"b": x[1] * 0.7, "c": x[2] * 0.8})  # a absent now, b absent before: only c moves
    assert float(famo.logits[0]) == float(logits[0]) and float(famo.logits[1]) == 0.0
    assert float(famo.logits[2]) != float(logits[2])


def test_robust_aggregators_trim_what_the_present_tasks_allow() -> None:
    """Krum (f = 1 needs 5 rows) and the trimmed mean (t = 1 needs 3) on fewer present tasks, by hand."""
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [10.0, 10.0], [1.1, 0.1], [0.2, 0.1]], dtype=torch.float64)
    krum = Krum(list("abcde"), n_byzantine=1)
    with krum.only([0, 2, 3, 4]):  # K' = 4 < 5: f' = 0, K' - 2 = 2 neighbours
        d = krum.aggregate(g[[0, 2, 3, 4]], torch.ones(4))
    dist = torch.cdist(g[[0, 2, 3, 4]], g[[0, 2, 3, 4]]) ** 2
    scores = [sorted(dist[i].tolist())[1:3] for i in range(4)]
    best = int(np.argmin([sum(s) for s in scores]))
    torch.testing.assert_close(d, g[[0, 2, 3, 4]][best].double(), rtol=0, atol=1e-12)
    with krum.only([0, 1]):  # two present rows: their mean
        d = krum.aggregate(g[[0, 1]], torch.ones(2))
    torch.testing.assert_close(d, torch.tensor([0.5, 1.0], dtype=torch.float64), rtol=0, atol=1e-12)
    assert krum.last_weights.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]
    trimmed = TrimmedMean(list("abc"))
    with trimmed.only([0, 2]):  # t' = 0: the mean
        d = trimmed.aggregate(g[[0, 2]], torch.ones(2))
    torch.testing.assert_close(d, torch.tensor([5.5, 5.0], dtype=torch.float64), rtol=0, atol=1e-12)
    trimmed5 = TrimmedMean(list("abcde"), trim=2)
    with trimmed5.only([0, 1, 2, 3]):  # t' = 1 on 4 rows: per coordinate, the mean of the middle two
        d = trimmed5.aggregate(g[:4], torch.ones(4))
    torch.testing.assert_close(d, torch.tensor([(1.0 + 1.1) / 2, (0.1 + 2.0) / 2], dtype=torch.float64))


def test_every_built_in_method_handles_absent_tasks() -> None:
    """No built-in method refuses a step without a task (a plugin's may, with its reason)."""
    assert [n for n in WEIGHTINGS.names() if not WEIGHTINGS.get(n).handles_absent_tasks] == []


@pytest.mark.parametrize("name", ["db_mtl", "moco"])
def test_gradient_averages_advance_at_each_task_s_own_rate(name: str) -> None:
    """DB-MTL's EMA and MoCo's tracking use beta_t with t the number of steps the task was present in.

    Steps: every task, then without b, then every task. At the third step b's row has been updated
    once before (t = 2) and a's twice (t = 3); the rows are computed here from their definitions.
    """
    names = ["a", "b", "c"]
    method = WEIGHTINGS.get(name)(names)
    theta = torch.linspace(-1, 1, D, dtype=torch.float64).requires_grad_(True)
    rows: dict[str, list[Tensor]] = {n: [] for n in names}  # each task's transformed gradient per present step
    for step, present in enumerate([names, ["a", "c"], names]):
        losses = _losses(theta, step, present)
        for n, loss in losses.items():
            g = torch.autograd.grad(loss, theta, retain_graph=True)[0]
            if name == "db_mtl":  # the gradient of log(L + 1e-8)
                rows[n].append(g / (float(loss) + 1e-8))
            else:  # the loss-scaled unit gradient
                rows[n].append(g / (g.norm() + 1e-8) * float(loss))
        _step(method, theta, losses)
        with torch.no_grad():
            theta -= 0.05 * theta.grad
    state = method.buffer if name == "db_mtl" else method.tracked
    assert state is not None
    for i, n in enumerate(names):
        h = torch.zeros(D, dtype=torch.float64)
        for t, g in enumerate(rows[n], start=1):
            if name == "db_mtl":
                b = 0.9 / t**0.5
                h = b * h + (1 - b) * g
            else:
                b = 0.5 / t**0.5
                h = h + b * (g - h)
        torch.testing.assert_close(state[i], h, rtol=1e-12, atol=1e-15, msg=lambda m, n=n: f"{name} row {n}: {m}")
    assert method.task_steps == [3, 2, 3]
