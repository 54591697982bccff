"""Auto-Lambda: the meta-gradient against central finite differences of the look-ahead meta loss,
the lambda-weighted base method, the meta split (from the training set, recorded in the results)
and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from helpers.nets import TinyNet, _batch
from helpers.runs import train_until_killed
from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.trainer import train
from mtlkit.weighting import AutoLambda, meta_split
from mtlkit.weighting.functional import meta_gradient

TASKS = [segmentation_task(3, "seg"), depth_task("depth"), normal_task("normal")]
NAMES = [t.name for t in TASKS]


SMOOTH_TASKS = [segmentation_task(3, "seg"), normal_task("normal")]


class SmoothNet(torch.nn.Module):
    """conv-tanh-conv-tanh trunk and 1x1 heads: smooth, so finite differences are accurate."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(5, 5, 3, padding=1), torch.nn.Tanh()
        )
        self.heads = torch.nn.ModuleDict({t.name: torch.nn.Conv2d(5, t.channels, 1) for t in SMOOTH_TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {n: head(h) for n, head in self.heads.items()}


def _look_ahead_loss(model, lam: torch.Tensor, train_batch, meta_batch, lr: float) -> float:
    """L_meta(theta - lr grad sum_k lam_k L_k(theta)), the slow way (float64 model)."""
    params = {n: p for n, p in model.named_parameters()}
    preds = functional_call(
        model, ({**params, **{n: b.clone() for n, b in model.named_buffers()}}), (train_batch["image"],)
    )
    total = sum(w * t.loss(preds[t.name], train_batch[t.name]) for w, t in zip(lam, SMOOTH_TASKS))
    grads = torch.autograd.grad(total, list(params.values()))
    new = {n: p.detach() - lr * g for (n, p), g in zip(params.items(), grads)}
    out = functional_call(model, ({**new, **{n: b.clone() for n, b in model.named_buffers()}}), (meta_batch["image"],))
    return float(sum(t.loss(out[t.name], meta_batch[t.name]) for t in SMOOTH_TASKS))


def test_meta_gradient_matches_second_order_autograd_and_finite_differences():
    torch.manual_seed(0)
    model = SmoothNet().double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in _batch().items() if k != "depth"}
    gen = torch.Generator().manual_seed(1)
    meta = {
        k: (v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype)) if v.is_floating_point() else v
        for k, v in batch.items()
    }
    lam, lr, eps = torch.tensor([0.3, 1.0], dtype=torch.float64), 0.5, 1e-3
    grad = meta_gradient(model, SMOOTH_TASKS, lam, batch, meta, lr)
    # exact reference: differentiate the look-ahead through the virtual step (second-order autograd)
    lam_var = lam.clone().requires_grad_(True)
    params = dict(model.named_parameters())
    preds = functional_call(model, params, (batch["image"],))
    total = sum(w * t.loss(preds[t.name], batch[t.name]) for w, t in zip(lam_var, SMOOTH_TASKS))
    step = torch.autograd.grad(total, list(params.values()), create_graph=True)
    out = functional_call(model, {n: p - lr * g for (n, p), g in zip(params.items(), step)}, (meta["image"],))
    exact = torch.autograd.grad(sum(t.loss(out[t.name], meta[t.name]) for t in SMOOTH_TASKS), lam_var)[0]
    torch.testing.assert_close(grad, exact, rtol=1e-6, atol=1e-10)
    # the paper's finite differences (the task losses compute in float32 inside: eps 1e-3)
    fd = []
    for k in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[k] = eps
        fd.append(
            (_look_ahead_loss(model, lam + e, batch, meta, lr) - _look_ahead_loss(model, lam - e, batch, meta, lr))
            / (2 * eps)
        )
    torch.testing.assert_close(grad, torch.tensor(fd, dtype=torch.float64), rtol=1e-2, atol=1e-6)


def test_meta_gradient_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = TinyNet(TASKS)
    before = {n: b.clone() for n, b in model.named_buffers()}
    grad = meta_gradient(model, TASKS, torch.full((3,), 0.1), _batch(), _batch(), 1e-2)
    assert grad.shape == (3,) and torch.isfinite(grad).all()
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


def test_lambda_scales_the_base_method_and_adam_moves_it():
    method = AutoLambda(NAMES, autol_init=0.5, base="cagrad")
    assert method.needs_gradients and method.supports_representation
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    ref = WEIGHTINGS.get("cagrad")(NAMES).aggregate(0.5 * g, 0.5 * torch.ones(3))
    torch.testing.assert_close(method.aggregate(g, torch.ones(3)), ref)
    loss_level = AutoLambda(NAMES, autol_init=0.1)
    total = loss_level.combine(torch.tensor([1.0, 2.0, 3.0]))
    assert float(total) == pytest.approx(0.6)
    loss_level.apply_meta_gradient(torch.tensor([1.0, -1.0, 0.0]))  # Adam's first step: lr * sign
    assert loss_level.lam.tolist() == pytest.approx([0.1 - 1e-4, 0.1 + 1e-4, 0.1], abs=1e-7)  # float32
    with pytest.raises(ConfigError, match="meta_fraction"):
        AutoLambda(NAMES, meta_fraction=1.0)
    with pytest.raises(ConfigError, match="base"):
        AutoLambda(NAMES, base="auto_lambda")


def test_meta_split_comes_from_the_training_set():
    method = AutoLambda(NAMES, meta_fraction=0.25)
    data = list(range(20))
    train_part, split = meta_split(method, data, seed=3, batch_size=4)
    assert len(split.meta) == 5 and len(train_part) == 15
    assert sorted(list(split.meta) + list(train_part)) == data  # a partition of the training set
    assert split.describe() == {"source": "train", "fraction": 0.25, "meta_images": 5, "train_images": 15}
    same, none = meta_split(WEIGHTINGS.get("equal")(NAMES), data, 3, 4)
    assert same is data and none is None
    with pytest.raises(ConfigError, match="one task"):
        meta_split(method, data, 3, 4, custom_batches=True)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_auto_lambda_trains_records_its_split_and_resumes_exactly(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(
        weighting={"name": "auto_lambda", "options": {"autol_lr": 1e-2, "meta_fraction": 0.25}}, train={"epochs": 2}
    )
    straight = train(cfg, run_dir=Path(cfg.out_dir) / "straight")
    results = json.loads((straight / "results.json").read_text())
    assert results["meta_split"]["source"] == "train" and results["meta_split"]["fraction"] == 0.25
    weights = [h["weights"] for h in _history(straight)]
    assert any(abs(w - 0.1) > 1e-4 for w in weights[-1].values()), weights  # lambda moved
    killed = Path(cfg.out_dir) / "killed"
    train_until_killed(cfg, killed, monkeypatch, at_step=4)
    train(resume=killed)
    assert [h["weights"] for h in _history(killed)] == weights
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(killed / "checkpoints" / "last.pt")
    assert torch.equal(a["weighting"]["lam"], b["weighting"]["lam"])


def test_auto_lambda_is_refused_under_several_processes(monkeypatch):
    from mtlkit.train import distributed as dist

    dist.check_weighting(AutoLambda(NAMES))  # one process: fine
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="meta batch"):
        dist.check_weighting(AutoLambda(NAMES))
    for name in WEIGHTINGS.names():
        if name != "auto_lambda":
            dist.check_weighting(WEIGHTINGS.get(name)(NAMES))  # every other method is accepted
