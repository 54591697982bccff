"""Auto-Lambda with absent tasks and partially labelled batches.

(a) every task labelled: the meta-gradient and the Adam step are bit-identical to the code before
absent tasks were handled (kept here verbatim) and equal the explicit -lr g_k . grad L_meta(theta');
(b) a task with no labelled sample in the training batch: no meta-gradient, its lambda and Adam
moments untouched, weight 0, and the other task's meta-gradient is the one of a model with that
task alone; (c) a task labelled on some samples: its losses are those of the labelled sub-batch;
(d) inside ``only()`` the base method runs restricted, on ``select(lam)``-scaled losses or rows.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from helpers.nets import TinyNet
from helpers.nets import _batch as tiny_batch
from mtlkit.models.base import MultiTaskModel
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import Task, normal_task, segmentation_task
from mtlkit.tasks.base import labelled_key
from mtlkit.train.hooks import MetaStep
from mtlkit.train.step import StepRunner
from mtlkit.weighting import AutoLambda, MetaSplit
from mtlkit.weighting.functional import meta_gradient
from mtlkit.weighting.gradients import per_task_gradients, unflatten_like

SEG, NORMAL = segmentation_task(3, "seg"), normal_task("normal")
TASKS = [SEG, NORMAL]
NAMES = [t.name for t in TASKS]
LR = 0.5


class Net(MultiTaskModel):
    """conv-tanh trunk and 1x1 heads, float64: smooth, and each sample's output depends on that sample alone
    (no BatchNorm), so a sub-batch's predictions are the full batch's rows."""

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__(tasks)
        self.trunk = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(), nn.Conv2d(5, 5, 3, padding=1), nn.Tanh())
        self.heads = nn.ModuleDict({t.name: nn.Conv2d(5, t.channels, 1) for t in tasks})
        self.double()

    def encode(self, x: Tensor) -> list[Tensor]:
        return [self.trunk(x)]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        return {n: self.heads[n](reps[0]) for n in (tasks or list(self.heads))}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


def _net(tasks: list[Task] = TASKS, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(tasks)


def _data(seed: int, n: int = 4) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64),
        "seg": torch.randint(0, 3, (n, 8, 8), generator=gen),
        "normal": F.normalize(torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64), dim=1),
    }


def _partial(batch: dict[str, Tensor], task: Task, labelled: list[bool]) -> dict[str, Tensor]:
    """``batch`` with ``task`` labelled on the samples ``labelled`` only: the others carry its dummy target."""
    out = dict(batch)
    mask = torch.tensor(labelled)
    target = batch[task.name].clone()
    target[~mask] = task.unlabelled((8, 8)).to(target)
    out[task.name], out[labelled_key(task.name)] = target, mask
    return out


def _garbage(batch: dict[str, Tensor], task: Task, seed: int) -> dict[str, Tensor]:
    """``batch`` with valid random targets on ``task``'s unlabelled samples (a loss that read them would change)."""
    gen = torch.Generator().manual_seed(seed)
    out, target = dict(batch), batch[task.name].clone()
    rows = ~batch[labelled_key(task.name)]
    fake = _data(seed, len(target))[task.name]
    fake = fake if task.name != "seg" else torch.randint(0, 3, fake.shape, generator=gen)
    target[rows] = fake[rows]
    out[task.name] = target
    return out


def _rows(batch: dict[str, Tensor], rows: list[int]) -> dict[str, Tensor]:
    return {k: v[rows] for k, v in batch.items()}


def _meta_gradient_before(model: nn.Module, tasks: list, lam: Tensor, train_batch: Any, meta_batch: Any, lr: float):
    """meta_gradient as it was before absent tasks were handled (verbatim): every task, every sample."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    preds = functional_call(model, ({**dict(named), **buffers}), (train_batch["image"],))
    losses = [t.loss(preds[t.name], train_batch[t.name]) for t in tasks]
    grads = per_task_gradients(losses, params, strategy="loop", key=("auto_lambda", len(params)))
    step = unflatten_like(lam.to(grads) @ grads, params)
    virtual = {n: (p.detach() - lr * s).requires_grad_(True) for n, p, s in zip(names, params, step)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    meta_preds = functional_call(model, ({**virtual, **buffers}), (meta_batch["image"],))
    meta_loss = sum(t.loss(meta_preds[t.name], meta_batch[t.name]) for t in tasks)
    v = torch.autograd.grad(meta_loss, list(virtual.values()), allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(v, params)])
    return -lr * (grads @ flat.to(grads))


def _explicit(model: nn.Module, train_losses, meta_losses, lam: Tensor, lr: float) -> Tensor:
    """-lr g_k . grad L_meta(theta') from explicit loss functions of the parameters (dict -> scalar each):
    ``train_losses`` the L_k(theta) that take the step, ``meta_losses`` the terms of L_meta."""
    params = dict(model.named_parameters())

    def flat(gs: tuple[Tensor, ...]) -> Tensor:
        return torch.cat([g.reshape(-1) for g in gs])

    g = [
        torch.autograd.grad(f(params), list(params.values()), allow_unused=True, materialize_grads=True)
        for f in train_losses
    ]
    new = {
        n: (p.detach() - lr * sum(w * gk[i] for w, gk in zip(lam, g))).requires_grad_(True)
        for i, (n, p) in enumerate(params.items())
    }
    v = torch.autograd.grad(
        sum(f(new) for f in meta_losses), list(new.values()), allow_unused=True, materialize_grads=True
    )
    return torch.stack([-lr * flat(gk) @ flat(v) for gk in g])


def _loss(model: nn.Module, task: Task, batch: dict[str, Tensor], rows: list[int] | None = None):
    """params -> ``task``'s loss on ``batch`` (its samples ``rows`` only: a forward of that sub-batch)."""
    sub = batch if rows is None else _rows(batch, rows)
    return lambda params: task.loss(functional_call(model, params, (sub["image"],))[task.name], sub[task.name])


def _adam_before(lam: Tensor, m: Tensor, v: Tensor, grad: Tensor, steps: int, lr: float) -> None:
    """AutoLambda.apply_meta_gradient as it was before absent tasks were handled (verbatim, on copies)."""
    m.mul_(0.9).add_(grad, alpha=0.1)
    v.mul_(0.999).addcmul_(grad, grad, value=0.001)
    m_hat = m / (1 - 0.9**steps)
    v_hat = v / (1 - 0.999**steps)
    lam -= lr * m_hat / (v_hat.sqrt() + 1e-8)


# ---------------------------------------------------------------------- (a) every task labelled


def test_all_labelled_meta_gradient_is_bit_identical_to_before_and_the_explicit_formula() -> None:
    model, lam = _net(), torch.tensor([0.3, 1.2], dtype=torch.float64)
    batch, meta = _data(1), _data(2)
    got = meta_gradient(model, TASKS, lam, batch, meta, LR)
    assert torch.equal(got, _meta_gradient_before(model, TASKS, lam, batch, meta, LR))
    # an all-true labelled mask is the same batch
    masked = _partial(_partial(batch, SEG, [True] * 4), NORMAL, [True] * 4)
    assert torch.equal(meta_gradient(model, TASKS, lam, masked, meta, LR), got)
    ref = _explicit(model, [_loss(model, t, batch) for t in TASKS], [_loss(model, t, meta) for t in TASKS], lam, LR)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-14)
    assert got.abs().min() > 1e-6  # a real gradient, not zeros
    # the real models' case: float32, BatchNorm, three tasks
    torch.manual_seed(0)
    tiny = TinyNet(TASKS)
    b32 = {k: v for k, v in tiny_batch().items() if k != "depth"}
    lam32 = torch.tensor([0.1, 0.2])
    assert torch.equal(
        meta_gradient(tiny, TASKS, lam32, b32, b32, 1e-2), _meta_gradient_before(tiny, TASKS, lam32, b32, b32, 1e-2)
    )


def test_all_tasks_adam_steps_are_bit_identical_to_before() -> None:
    method = AutoLambda(NAMES + ["c"], autol_lr=1e-2)
    lam, m, v = method.lam.clone(), method.exp_avg.clone(), method.exp_avg_sq.clone()
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        grad = torch.randn(3, generator=gen) * 10.0**-step
        method.apply_meta_gradient(grad, None if step % 2 else [0, 1, 2])
        _adam_before(lam, m, v, grad, step, 1e-2)
        assert torch.equal(method.lam, lam) and torch.equal(method.exp_avg, m) and torch.equal(method.exp_avg_sq, v)
    assert method.meta_steps == 4 and method.lam_steps == [4, 4, 4]


# ---------------------------------------------------------------------- (b) a task with no labelled sample


def test_a_task_absent_from_the_training_batch_gets_no_meta_gradient() -> None:
    model, lam = _net(), torch.tensor([0.3, 1.2], dtype=torch.float64)
    batch = _partial(_data(1), NORMAL, [False] * 4)
    meta = _partial(_data(2), NORMAL, [False] * 4)
    got = meta_gradient(model, TASKS, lam, batch, meta, LR)
    # the model with the seg task alone (same trunk and seg head), on the batches without normal
    alone = _net([SEG], seed=5)
    alone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("heads.normal")})
    seg_only = [{k: v for k, v in b.items() if not k.startswith("normal")} for b in (batch, meta)]
    ref = meta_gradient(alone, [SEG], lam[:1], *seg_only, LR)
    assert float(got[1]) == 0.0 and abs(float(got[0])) > 1e-6
    torch.testing.assert_close(got[:1], ref, rtol=1e-10, atol=1e-15)
    # the dummy targets are never read
    other = _garbage(batch, NORMAL, 7), _garbage(meta, NORMAL, 8)
    assert torch.equal(meta_gradient(model, TASKS, lam, *other, LR), got)


def _dataset(normal_labelled: list[bool], seed: int = 3) -> list[dict[str, Tensor]]:
    data = _partial(_data(seed, len(normal_labelled)), NORMAL, normal_labelled)
    return [{k: v[i] for k, v in data.items()} for i in range(len(normal_labelled))]


def test_meta_step_without_the_task_leaves_its_lambda_and_moments_and_weighs_it_zero() -> None:
    model = _net()
    method = AutoLambda(NAMES, autol_lr=1e-2, meta_fraction=0.5).double()
    dataset = _dataset([True, False, True, True, False, True, True, False])
    split = MetaSplit(method, dataset, seed=0, batch_size=3)
    loop = SimpleNamespace(model=model, tasks=TASKS, optimizer=torch.optim.SGD(model.parameters(), lr=LR))
    hook = MetaStep(split)
    hook.before_step(loop, _data(1, 3))  # a first meta step with every task: both have moments
    assert method.lam_steps == [1, 1] and bool((method.exp_avg != 0).all())
    lam0, m0, v0 = method.lam.clone(), method.exp_avg.clone(), method.exp_avg_sq.clone()
    batch = _partial(_data(4, 3), NORMAL, [False] * 3)
    meta = split.meta_batch(torch.device("cpu"))  # the meta batch the step draws (from the step count)
    mask = meta[labelled_key("normal")]
    assert mask.any() and not mask.all()  # normal counts in the meta loss, on some samples
    hook.before_step(loop, batch)  # the trainer's hook: the partial batch goes through as it is
    assert method.meta_steps == 2 and method.lam_steps == [2, 1]
    assert float(method.lam[1]) == float(lam0[1])
    assert float(method.exp_avg[1]) == float(m0[1]) and float(method.exp_avg_sq[1]) == float(v0[1])
    # seg's lambda: Adam's second step on -lr g_seg . grad (L_seg + L_normal on its labelled meta rows)
    rows = meta[labelled_key("normal")].nonzero().reshape(-1).tolist()
    g = _explicit(
        model, [_loss(model, SEG, batch)], [_loss(model, SEG, meta), _loss(model, NORMAL, meta, rows)], lam0[:1], LR
    )
    m = 0.9 * m0[0] + 0.1 * g[0]
    v = 0.999 * v0[0] + 0.001 * g[0] ** 2
    want = lam0[0] - 1e-2 * (m / (1 - 0.9**2)) / ((v / (1 - 0.999**2)).sqrt() + 1e-8)
    torch.testing.assert_close(method.lam[0], want, rtol=1e-12, atol=1e-15)
    assert float(method.lam[0]) != float(lam0[0])
    # the training step: normal is dropped, its weight is 0, seg's is its lambda
    StepRunner(model, method, TASKS, torch.optim.SGD(model.parameters(), lr=1e-3))(batch)
    assert method.last_weights.tolist() == [pytest.approx(float(method.lam[0])), 0.0]


def test_a_meta_step_with_no_label_updates_nothing_but_counts() -> None:
    model = _net()
    method = AutoLambda(NAMES, autol_lr=1e-2, meta_fraction=0.5).double()
    method.apply_meta_gradient(torch.tensor([1.0, -1.0]))
    state = [t.clone() for t in (method.lam, method.exp_avg, method.exp_avg_sq)]
    dataset = _dataset([False] * 8)
    for sample in dataset:  # no task labelled anywhere in the meta split
        sample[labelled_key("seg")] = torch.tensor(False)
    split = MetaSplit(method, dataset, seed=0, batch_size=2)
    first = split.meta_batch(torch.device("cpu"))["image"]
    split.step(model, TASKS, _data(1, 2), LR)
    assert all(torch.equal(a, b) for a, b in zip(state, (method.lam, method.exp_avg, method.exp_avg_sq)))
    assert method.meta_steps == 2 and method.lam_steps == [1, 1]
    assert not torch.equal(split.meta_batch(torch.device("cpu"))["image"], first)  # the next one is another
    # a training batch without any label: nothing either
    meta_ok = _data(2, 2)
    empty = _partial(_partial(_data(1, 2), SEG, [False] * 2), NORMAL, [False] * 2)
    assert meta_gradient(model, TASKS, method.lam, empty, meta_ok, LR).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------- (c) a task labelled on some samples


def test_partially_labelled_task_uses_only_its_labelled_samples() -> None:
    model, lam = _net(), torch.tensor([0.3, 1.2], dtype=torch.float64)
    batch = _garbage(_partial(_data(1), NORMAL, [True, False, True, False]), NORMAL, 7)
    meta = _garbage(_partial(_data(2), NORMAL, [False, True, True, False]), NORMAL, 8)
    got = meta_gradient(model, TASKS, lam, batch, meta, LR)
    ref = _explicit(
        model,
        [_loss(model, SEG, batch), _loss(model, NORMAL, batch, [0, 2])],
        [_loss(model, SEG, meta), _loss(model, NORMAL, meta, [1, 2])],
        lam,
        LR,
    )
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-14)
    # the unlabelled rows' targets would change it if they were read; the kind's dummy gives the same
    unmasked = {k: v for k, v in batch.items() if not k.endswith("/labelled")}
    assert not torch.allclose(meta_gradient(model, TASKS, lam, unmasked, meta, LR), got)
    dummy = (
        _partial(_data(1), NORMAL, [True, False, True, False]),
        _partial(_data(2), NORMAL, [False, True, True, False]),
    )
    assert torch.equal(meta_gradient(model, TASKS, lam, *dummy, LR), got)


# ---------------------------------------------------------------------- (d) the base method inside only()


def test_combine_inside_only_is_the_restricted_base_on_selected_lambdas() -> None:
    names = ["a", "b", "c"]
    method = AutoLambda(names, base="uncertainty")
    ref = WEIGHTINGS.get("uncertainty")(names)
    lam = torch.tensor([0.2, 0.5, 2.0])
    method.lam.copy_(lam)
    with torch.no_grad():
        method.base.log_vars.copy_(torch.tensor([-0.3, 0.1, 0.4]))
        ref.log_vars.copy_(method.base.log_vars)
    losses = torch.tensor([1.5, 0.7])
    seen: list[list[str]] = []
    base_combine = method.base.combine

    def spy(x: Tensor) -> Tensor:
        seen.append(list(method.base.task_names))
        return base_combine(x)

    method.base.combine = spy  # type: ignore[method-assign]
    with method.only([0, 2]):
        total = method.combine(losses)
    assert seen == [["a", "c"]]  # the base ran restricted to the present tasks
    with ref.only([0, 2]):
        want = ref.combine(lam[[0, 2]] * losses)
    assert torch.equal(total, want)
    expected = lam * torch.exp(-ref.log_vars.detach()) * 0.5
    assert method.last_weights.tolist() == pytest.approx([float(expected[0]), 0.0, float(expected[2])])
    total.backward()
    assert method.base.log_vars.grad is not None and float(method.base.log_vars.grad[1]) == 0.0
    assert method.base.present is None and method.base.task_names == names


def test_aggregate_and_gramian_inside_only_are_the_restricted_base() -> None:
    names = ["a", "b", "c"]
    method = AutoLambda(names, base="mgda").double()
    lam = torch.tensor([0.2, 0.5, 2.0], dtype=torch.float64)
    method.lam.copy_(lam)
    g = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    losses = torch.tensor([1.5, 0.7], dtype=torch.float64)
    sel = lam[[0, 2]]
    with method.only([0, 2]):
        d = method.aggregate(g, losses)
    ref = WEIGHTINGS.get("mgda")(names).double()
    with ref.only([0, 2]):
        want = ref.aggregate(g * sel[:, None], losses * sel)
        base_w = ref.last_weights.clone()
    torch.testing.assert_close(d, want, rtol=0, atol=0)
    assert method.last_weights.tolist() == pytest.approx([float(sel[0] * base_w[0]), 0.0, float(sel[1] * base_w[1])])
    with method.only([0, 2]):
        w = method.weights_from_gramian(g @ g.T, losses)
    with ref.only([0, 2]):
        w_ref = ref.weights_from_gramian((g @ g.T) * torch.outer(sel, sel), losses * sel)
    torch.testing.assert_close(w, sel * w_ref)
    torch.testing.assert_close(w @ g, d)  # the raw rows' weights give the same update
    assert method.last_weights[1] == 0.0


def test_a_base_that_cannot_drop_a_task_makes_auto_lambda_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AutoLambda(NAMES).handles_absent_tasks
    monkeypatch.setattr(WEIGHTINGS.get("equal"), "handles_absent_tasks", False)
    method = AutoLambda(NAMES)
    assert not method.handles_absent_tasks
    with pytest.raises(ValueError, match="cannot drop a task"):
        with method.only([0]):
            pass


def test_the_step_counts_resume_and_old_checkpoints_load() -> None:
    method = AutoLambda(["a", "b", "c"])
    method.apply_meta_gradient(torch.tensor([1.0, 2.0]), [0, 2])
    method.apply_meta_gradient(torch.tensor([1.0]), [2])
    other = AutoLambda(["a", "b", "c"])
    other.load_state_dict(method.state_dict())
    assert other.meta_steps == 2 and other.lam_steps == [1, 0, 2] and torch.equal(other.lam, method.lam)
    other.set_extra_state({"meta_steps": 5})  # a checkpoint from before: every lambda had every step
    assert other.lam_steps == [5, 5, 5]
    with pytest.raises(ValueError, match="ascending"):
        method.apply_meta_gradient(torch.tensor([1.0, 2.0]), [2, 0])
    with pytest.raises(ValueError, match="entries"):
        method.apply_meta_gradient(torch.tensor([1.0, 2.0]), [1])


@pytest.mark.slow
def test_auto_lambda_trains_on_partially_labelled_data(tiny_cfg) -> None:
    """dataset.label_fraction: batches without a normal label train the other tasks, normal's lambda sits out."""
    from mtlkit.train.checkpoint import load_checkpoint
    from mtlkit.train.trainer import train

    cfg = tiny_cfg(
        dataset={"label_fraction": {"normal": 0.2}},
        weighting={"name": "auto_lambda", "options": {"autol_lr": 1e-2, "meta_fraction": 0.25}},
        train={"epochs": 2},
    )
    run = train(cfg)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    state, extra = ckpt["weighting"], ckpt["weighting"]["_extra_state"]
    steps = dict(zip(ckpt["meta"]["tasks"], extra["lam_steps"]))
    assert steps.pop("normal") < extra["meta_steps"], extra  # the batches without a normal label
    assert all(n == extra["meta_steps"] for n in steps.values()), extra  # the fully labelled tasks: every step
    assert torch.isfinite(state["lam"]).all() and not torch.equal(state["lam"], torch.full_like(state["lam"], 0.1))


def test_the_labelled_loss_helpers_live_in_tasks_and_still_import_from_the_step() -> None:
    import mtlkit.tasks.base as tasks_base
    import mtlkit.train.step as step

    assert step.task_loss is tasks_base.task_loss and step.present_tasks is tasks_base.present_tasks
