"""Per-task gradients (batched vs looped), writing them back, and the Gramian helper."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit.weighting import gradients
from mtlkit.weighting.gradients import (
    batching_failure,
    decided_path,
    gradient_path,
    gramian,
    gramian_blockwise,
    graph_key,
    per_task_gradients,
    unflatten_like,
    weighted_backward,
    write_gradients,
)


class PoolNet(nn.Module):
    """Conv-BN-ReLU, max-pool with indices, conv-BN, max-unpool, three 1x1 heads (the models' ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.heads = nn.ModuleList(nn.Conv2d(4, 2, 1) for _ in range(3))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h, idx = F.max_pool2d(h, 2, 2, return_indices=True)
        h = F.relu(self.bn2(self.conv2(h)))
        return F.max_unpool2d(h, idx, 2, 2)

    def losses(self, rep: torch.Tensor) -> torch.Tensor:
        outs = [head(rep) for head in self.heads]
        return torch.stack([outs[0].pow(2).mean(), (outs[1] - 1).abs().mean(), outs[2].sigmoid().mean()])

    def shared(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("heads")]


def _reference(losses: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """K separate backward passes: the definition of the per-task gradient matrix."""
    rows = []
    for k in range(losses.numel()):
        grads = torch.autograd.grad(losses[k], inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(t)).reshape(-1) for g, t in zip(grads, inputs)])
        )
    return torch.stack(rows)


@pytest.fixture(autouse=True)
def _fresh_paths():
    gradients.forget_gradient_paths()
    yield
    gradients.forget_gradient_paths()


def _net_and_losses(seed: int = 0):
    torch.manual_seed(seed)
    net = PoolNet().train()
    x = torch.randn(2, 3, 8, 8)
    rep = net.encode(x)
    return net, rep, net.losses(rep)


def test_batched_matches_loop_on_shared_parameters_with_bn_and_unpool():
    net, _, losses = _net_and_losses()
    params = net.shared()
    ref = _reference(losses, params)
    got = per_task_gradients(losses, params, retain_graph=True, strategy="batched")
    assert got.shape == (3, sum(p.numel() for p in params))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert gradient_path(graph_key(params)) == "batched"
    assert batching_failure(graph_key(params)) is None
    looped = per_task_gradients(losses, params, retain_graph=True, strategy="loop")
    torch.testing.assert_close(looped, ref, rtol=1e-5, atol=1e-7)
    assert gradient_path(graph_key(params)) == "loop"


def test_representation_gradients_and_chunks():
    net, rep, _ = _net_and_losses(1)
    leaf = rep.detach().requires_grad_(True)
    losses = net.losses(leaf)
    ref = _reference(losses, [leaf])
    for chunk in (None, 1, 2):
        got = per_task_gradients(losses, [leaf], retain_graph=True, chunk_size=chunk, strategy="batched")
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert got.shape == (3, leaf.numel())


def test_unused_inputs_and_constant_losses_give_zero_rows():
    w = torch.randn(3, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)
    losses = torch.stack([w.sum(), torch.zeros(()), (w * w).sum()])
    got = per_task_gradients(losses, [w, unused])
    expected = torch.cat([torch.stack([torch.ones(3), torch.zeros(3), 2 * w.detach()]), torch.zeros(3, 2)], dim=1)
    torch.testing.assert_close(got, expected)
    const = per_task_gradients(torch.zeros(2), [w])
    assert torch.equal(const, torch.zeros(2, 3))


def test_single_task_and_graph_kept_when_asked():
    w = torch.randn(4, requires_grad=True)
    loss = (w**3).sum()
    got = per_task_gradients(loss.reshape(1), [w], retain_graph=True)
    torch.testing.assert_close(got, 3 * w.detach().pow(2).reshape(1, 4))
    (g,) = torch.autograd.grad(loss, [w])  # the graph is still there
    torch.testing.assert_close(g, got[0])


class _ItemInBackward(torch.autograd.Function):
    """Identity whose backward calls .item(): vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * (1.0 + 0.0 * grad.sum().item())


def test_falls_back_to_loop_once_per_key_when_batching_fails():
    w = torch.randn(5, requires_grad=True)

    def losses_fn():
        y = _ItemInBackward.apply(w)
        return torch.stack([y.sum(), (y * y).sum(), y[0] * 3])

    losses = losses_fn()
    ref = _reference(losses, [w])
    with pytest.warns(RuntimeWarning, match="batched backward failed"):
        got = per_task_gradients(losses, [w], key="bad-model", strategy="auto")
    torch.testing.assert_close(got, ref)
    assert gradient_path("bad-model") == "loop" and decided_path("bad-model") == "loop"
    assert "item" in batching_failure("bad-model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second attempt, no second warning
        again = per_task_gradients(losses_fn(), [w], key="bad-model", strategy="auto")
    torch.testing.assert_close(again, ref)
    with pytest.raises(RuntimeError):
        per_task_gradients(losses_fn(), [w], key="other", strategy="batched")


def test_separate_losses_and_accumulated_task_parameters():
    net, _, _ = _net_and_losses(2)
    x = torch.randn(2, 3, 8, 8)
    heads = list(net.heads.parameters())
    for strategy in ("batched", "loop"):
        rep = net.encode(x)
        outs = [head(rep) for head in net.heads]
        losses = [outs[0].pow(2).mean(), (outs[1] - 1).abs().mean(), outs[2].sigmoid().mean()]
        ref = _reference(torch.stack(losses), net.shared())
        ref_heads = torch.autograd.grad(sum(losses), heads, retain_graph=True)
        net.zero_grad(set_to_none=True)
        got = per_task_gradients(losses, net.shared(), accumulate=heads, strategy=strategy)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
        for p, g in zip(heads, ref_heads):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
        assert all(p.grad is None for p in net.shared())  # rows are returned, not written


def test_loop_over_separate_losses_runs_each_task_branch_once():
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    calls = {"stacked": 0, "separate": 0}
    for form in calls:
        shared = w * 2
        branches = [shared.sin(), shared.cos(), shared.exp()]
        branches[1].register_hook(lambda g, f=form: calls.__setitem__(f, calls[f] + 1))
        losses = [b.sum() for b in branches]
        arg = torch.stack(losses) if form == "stacked" else losses
        got = per_task_gradients(arg, [w], strategy="loop")
        torch.testing.assert_close(got[1], -2 * (2 * w.detach()).sin())
    assert calls == {"stacked": 3, "separate": 1}


def test_auto_times_both_paths_then_keeps_one():
    net, _, _ = _net_and_losses(3)
    x = torch.randn(2, 3, 8, 8)
    key = "tiny-net"
    paths = []
    for _ in range(7):
        rep = net.encode(x)
        losses = net.losses(rep)
        ref = _reference(losses, net.shared())
        got = per_task_gradients(losses, net.shared(), key=key, strategy="auto")
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
        paths.append(gradient_path(key))
    assert paths[:5] == ["batched", "loop", "batched", "loop", "batched"]  # try, then 2 timings each
    assert decided_path(key) in ("batched", "loop") and paths[5:] == [decided_path(key)] * 2


def test_default_path_is_the_fixed_loop_never_timing():
    assert gradients.DEFAULT_STRATEGY == "loop"
    net, _, _ = _net_and_losses(4)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(6):  # more calls than "auto" needs to start timing: the path never changes
        losses = net.losses(net.encode(x))
        ref = _reference(losses, net.shared())
        got = per_task_gradients(losses, net.shared(), key="default")
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
        assert gradient_path("default") == "loop" and decided_path("default") is None


def test_write_gradients_accumulates_in_parameter_order_and_unflatten():
    a = nn.Parameter(torch.zeros(2, 3))
    b = nn.Parameter(torch.zeros(4))
    vec = torch.arange(10.0)
    write_gradients([a, b], vec)
    assert torch.equal(a.grad, torch.arange(6.0).reshape(2, 3))
    assert torch.equal(b.grad, torch.arange(6.0, 10.0))
    write_gradients([a, b], vec)
    assert torch.equal(b.grad, 2 * torch.arange(6.0, 10.0))
    with pytest.raises(ValueError, match="11 entries"):
        write_gradients([a, b], torch.zeros(11))
    parts = unflatten_like(vec, [a, b])
    assert [p.shape for p in parts] == [a.shape, b.shape] and torch.equal(parts[1], torch.arange(6.0, 10.0))


def test_gramian_is_float64_gram_matrix():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    m = gramian(g)
    assert m.dtype == torch.float64
    torch.testing.assert_close(m, torch.tensor([[5.0, 1.0], [1.0, 10.0]], dtype=torch.float64))


@pytest.mark.parametrize("max_block", [1, 40, 10**6])
def test_blockwise_gramian_matches_the_full_matrix_and_weighted_backward_gives_the_update(max_block):
    net, rep, losses = _net_and_losses(3)
    shared = net.shared()
    full = _reference(losses, shared)
    blocks = gramian_blockwise(list(losses.unbind(0)), shared, max_block, retain_graph=True)
    torch.testing.assert_close(blocks, gramian(full), rtol=1e-5, atol=1e-7)
    w = torch.tensor([0.5, 2.0, 1.5])
    for p in net.parameters():
        p.grad = None
    weighted_backward(list(losses.unbind(0)), w)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, w @ full, rtol=1e-5, atol=1e-7)
