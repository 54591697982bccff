"""Every ``grad_path`` gives the update of the K x D loop reference, per method, in both modes.

The reference is ``grad_path="loop"``: K backward passes, the K x D matrix, ``aggregate``. The
other paths ("batched": one vmapped pass, the same matrix; "gramian": the K x K Gramian a block at a
time, the method's weights, one backward of sum_k w_k L_k) must fill the same ``.grad`` in every
parameter (shared and task-specific) and give the method the same weights. Also under autocast with
a GradScaler (the trainer's AMP step), under two processes (gloo), and the Gramian path never
creating a K x D tensor.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mtlkit.balance import GRAD_PATHS, Balancer, FeatureCut
from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS

GRADIENT_METHODS = sorted(n for n in WEIGHTINGS.names() if WEIGHTINGS.get(n).needs_gradients)
GRAMIAN_METHODS = [n for n in GRADIENT_METHODS if WEIGHTINGS.get(n).gramian_only]
FULL_METHODS = [n for n in GRADIENT_METHODS if not WEIGHTINGS.get(n).gramian_only]


class Net(nn.Module):
    """Linear-BatchNorm-tanh-linear trunk and one linear head per task (the ops that matter: BN in
    training mode under vmap, a nonlinearity, task-specific parameters)."""

    def __init__(self, k: int, width: int = 6) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Linear(width, width))
        self.heads = nn.ModuleList([nn.Linear(width, 2) for _ in range(k)])

    def shared(self) -> list[Tensor]:
        return list(self.trunk.parameters())


def _losses(net: Net, feats: Tensor, y: Tensor) -> list[Tensor]:
    """Task k: squared error of head k against its own target, times (k + 1) (different scales)."""
    return [(k + 1) * ((head(feats) - y[:, k]) ** 2).mean() for k, head in enumerate(net.heads)]


def _step(
    net: Net,
    method: str,
    path: str,
    mode: str,
    x: Tensor,
    y: Tensor,
    *,
    autocast: bool = False,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[Tensor, Tensor]:
    """(every parameter's .grad, flat, in the model's order; the method's weights) after one backward."""
    net.zero_grad(set_to_none=True)
    k = len(net.heads)
    balancer = Balancer(method, k, grad_path=path)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        encoded = net.trunk(x)
        cut = FeatureCut([encoded]) if mode == "representation" else None
        losses = _losses(net, cut[0] if cut is not None else encoded, y)
    balancer.backward(losses, net.shared(), features=cut, scaler=scaler)
    grads = torch.cat([p.grad.reshape(-1).double() for p in net.parameters()])
    return grads, balancer.weights.double()


def _problem(k: int, dtype: torch.dtype) -> tuple[Net, Tensor, Tensor]:
    torch.manual_seed(0)
    net = Net(k).to(dtype)
    return net, torch.randn(8, 5, dtype=dtype), torch.randn(8, k, 2, dtype=dtype)


def _tasks(method: str) -> int:
    return max(3, WEIGHTINGS.get(method).min_tasks)


def _refused(method: str, path: str, mode: str) -> str | None:
    """Why (method, path, mode) does not run, or None."""
    cls = WEIGHTINGS.get(method)
    if mode == "representation" and not cls.supports_representation:
        return f"{method} needs gradients w.r.t. parameters"
    if path == "gramian" and not cls.gramian_only:
        return f"{method} needs the K x D gradients (refused: test_gramian_path_refuses_methods_that_need_g)"
    return None


@pytest.mark.parametrize("mode", ["parameters", "representation"])
@pytest.mark.parametrize("path", [p for p in GRAD_PATHS if p != "loop"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_path_equals_the_loop_reference_in_float64(method: str, path: str, mode: str) -> None:
    """float64: the paths differ only in summation order, so they agree to ~1e-16 relative; 1e-10 leaves
    room for a solver's condition number (active sets, Newton steps) of up to 1e5 on this problem."""
    reason = _refused(method, path, mode)
    if reason:
        pytest.skip(reason)
    net, x, y = _problem(_tasks(method), torch.float64)
    ref, ref_w = _step(net, method, "loop", mode, x, y)
    got, got_w = _step(net, method, path, mode, x, y)
    assert ref.abs().max() > 0
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    # last_weights is float32 on every path (the K x D path rounds it there too)
    assert torch.allclose(got_w, ref_w, rtol=1e-6, atol=1e-6 * float(ref_w.abs().max()))


@pytest.mark.parametrize("mode", ["parameters", "representation"])
@pytest.mark.parametrize("path", ["batched", "gramian"])
@pytest.mark.parametrize("method", ["mgda", "upgrad", "pcgrad", "cagrad", "imtl"])
def test_paths_equal_the_loop_reference_in_float32(method: str, path: str, mode: str) -> None:
    """float32: each gradient entry is a sum of at most D products (here D < 200), each path's rows
    carry a relative rounding of about sqrt(D) eps32 (random-sign errors), the weights from the
    float64 Gramian move by that much times the solver's condition, and the weighted sum of K rows
    adds K eps32: bound 10 K sqrt(D) eps32 relative to the largest entry, allowing a condition of 10
    (measured: at most 0.04 K sqrt(D) eps32 over these cases, PCGrad's sequential projections the most)."""
    net, x, y = _problem(_tasks(method), torch.float32)
    d = sum(p.numel() for p in net.parameters())
    ref, _ = _step(net, method, "loop", mode, x, y)
    got, _ = _step(net, method, path, mode, x, y)
    bound = 10 * len(net.heads) * math.sqrt(d) * torch.finfo(torch.float32).eps
    assert float((got - ref).abs().max()) <= bound * float(ref.abs().max())


@pytest.mark.parametrize("mode", ["parameters", "representation"])
@pytest.mark.parametrize(("method", "path"), [("mgda", "gramian"), ("upgrad", "gramian"), ("pcgrad", "batched")])
def test_paths_agree_under_autocast_with_a_grad_scaler(method: str, path: str, mode: str) -> None:
    """bfloat16 autocast + GradScaler (the trainer's AMP step): the scaled .grad, unscaled, equals the
    loop's. The forward is the same bf16 graph on both paths; the backward's bf16 matmuls may sum in
    another order (vmapped), a relative error of eps_bf16 = 2^-8 per op through the trunk's 3 ops and
    the K-term sum: bound 4 K eps_bf16 of the largest entry (measured: at most 0.4 K eps_bf16)."""
    net, x, y = _problem(3, torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ref, _ = _step(net, method, "loop", mode, x, y, autocast=True, scaler=scaler)
    got, _ = _step(net, method, path, mode, x, y, autocast=True, scaler=scaler)
    scale = scaler.get_scale()
    assert scale == 2.0**10
    plain, _ = _step(net, method, "loop", mode, x, y, autocast=True)
    assert torch.allclose(ref / scale, plain, rtol=1e-5, atol=1e-6 * float(plain.abs().max()))  # the scale is undone
    bound = 4 * 3 * 2.0**-8
    assert float((got - ref).abs().max()) <= bound * float(ref.abs().max())


def test_a_shared_parameter_no_loss_reaches_gets_zeros_on_every_path() -> None:
    """As the K x D path's write_gradients: zeros, not None (an optimizer treats the two differently)."""
    a, unused = nn.Parameter(torch.randn(3, dtype=torch.float64)), nn.Parameter(torch.randn(2, dtype=torch.float64))
    for path in GRAD_PATHS:
        a.grad = unused.grad = None
        Balancer("mgda", 3, grad_path=path).backward([((k + 1) * a).pow(2).sum() for k in range(3)], [a, unused])
        assert unused.grad is not None and torch.equal(unused.grad, torch.zeros(2, dtype=torch.float64)), path


@pytest.mark.parametrize("block", [1, 40, 10**9])
def test_gramian_block_budget_changes_the_passes_not_the_result(block: int) -> None:
    """One element per block (every scalar its own pass), 40, one block for everything: same update."""
    net, x, y = _problem(3, torch.float64)
    ref, _ = _step(net, "upgrad", "loop", "parameters", x, y)
    net.zero_grad(set_to_none=True)
    Balancer("upgrad", 3, grad_path="gramian", gramian_block=block).backward(
        _losses(net, net.trunk(x), y), net.shared()
    )
    got = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="gramian_block: expected a number of elements >= 1 or None, got 0"):
        Balancer("upgrad", 3, grad_path="gramian", gramian_block=0)


@pytest.mark.parametrize("mode", ["parameters", "representation"])
def test_auto_lambda_over_a_gramian_method_takes_the_gramian_path(mode: str) -> None:
    """Auto-Lambda's weights are lambda_k times its base's on the lambda-weighted rows, whose Gramian is
    diag(lambda) G G^T diag(lambda): the same update as ``aggregate`` on the K x D matrix."""
    from mtlkit.weighting import AutoLambda

    net, x, y = _problem(3, torch.float64)
    out = []
    for path in ("loop", "gramian"):
        method = AutoLambda(["a", "b", "c"], base="nash_mtl").double()
        method.lam.copy_(torch.tensor([0.5, 1.0, 2.0]))
        assert method.gramian_only
        net.zero_grad(set_to_none=True)
        encoded = net.trunk(x)
        cut = FeatureCut([encoded]) if mode == "representation" else None
        Balancer(method, grad_path=path).backward(
            _losses(net, cut[0] if cut is not None else encoded, y), net.shared(), features=cut
        )
        out.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert torch.allclose(out[1], out[0], rtol=1e-10, atol=1e-10 * float(out[0].abs().max()))
    assert AutoLambda(["a", "b", "c"], base="pcgrad").gramian_only  # pcgrad is Gramian-only
    assert not AutoLambda(["a", "b", "c"], base="graddrop").gramian_only


def test_results_record_the_effective_path() -> None:
    from types import SimpleNamespace

    from mtlkit.train.loop import results_extra

    def loop(method: str, path: str) -> SimpleNamespace:
        evaluation = SimpleNamespace(results=dict)
        return SimpleNamespace(
            weighting=WEIGHTINGS.get(method)(["a", "b"]), grad_path=path, evaluation=evaluation, hooks=[]
        )

    assert results_extra(loop("mgda", "gramian"))["grad_path"] == "gramian"  # type: ignore[arg-type]
    assert results_extra(loop("pcgrad", "batched"))["grad_path"] == "batched"  # type: ignore[arg-type]
    assert results_extra(loop("equal", "loop"))["grad_path"] == "combine"  # type: ignore[arg-type]


@pytest.mark.parametrize("method", FULL_METHODS)
def test_gramian_path_refuses_methods_that_need_g(method: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"grad_path: gramian .*{type(WEIGHTINGS.get(method)(['a', 'b', 'c'])).__name__}"
    ):
        Balancer(method, _tasks(method), grad_path="gramian")


def test_unknown_grad_path_and_loss_level_methods() -> None:
    with pytest.raises(ConfigError, match="weighting.grad_path must be one of loop, batched, gramian, got 'fast'"):
        Balancer("mgda", 2, grad_path="fast")
    assert Balancer("equal", 2, grad_path="gramian").effective_path == "combine"  # ignored, recorded as such
    assert Balancer("mgda", 2, grad_path="gramian").effective_path == "gramian"


def test_config_accepts_every_path_and_keeps_the_loop_default() -> None:
    from mtlkit.config import WeightingConfig

    assert WeightingConfig().grad_path == "loop"
    assert {WeightingConfig(grad_path=p).grad_path for p in GRAD_PATHS} == set(GRAD_PATHS)


class _LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an operator returns (vmapped ops included: the mode
    sees the physical K-batched tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_gramian_path_never_creates_a_k_by_d_tensor() -> None:
    """Structural, not timed (parameter mode, where D is the model's size): the loop path creates the
    K x D matrix (so the check can fail); the Gramian path's largest tensor is one block's rows, at most
    K x max(ceil(D / K), the largest parameter) = K x 144 here, below K x D = 4 x 252."""
    k = 4
    torch.manual_seed(0)
    net = Net(k, width=12).double()
    x, y = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, k, 2, dtype=torch.float64)
    d = sum(p.numel() for p in net.shared())
    sizes = {}
    for path in ("loop", "gramian"):
        net.zero_grad(set_to_none=True)
        losses = _losses(net, net.trunk(x), y)
        with _LargestTensor() as spy:
            Balancer("mgda", k, grad_path=path).backward(losses, net.shared())
        sizes[path] = spy.largest
    assert sizes["loop"] >= k * d
    assert sizes["gramian"] <= k * max(-(-d // k), max(p.numel() for p in net.shared())) < k * d


def _ddp_worker(r: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    out = {}
    for mode in ("parameters", "representation"):
        for method in ("mgda", "nash_mtl"):  # nash_mtl: weights that move with the Gramian's scale
            torch.manual_seed(0)
            net = Net(3).double()
            net.trunk[1] = nn.Identity()  # BatchNorm statistics are per process; SyncBN is the trainer's
            x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, 2, dtype=torch.float64)
            part = slice(4 * r, 4 * r + 4)
            out[mode, method] = _step(net, method, "gramian", mode, x[part], y[part])[0]
    torch.save(out, f"{out_dir}/{r}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_gramian_path_under_two_processes_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """Two gloo processes, half the batch each, Gramian path == one process, whole batch, loop path."""
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for (mode, method), got in ranks[0].items():
        torch.manual_seed(0)
        net = Net(3).double()
        net.trunk[1] = nn.Identity()
        x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, 2, dtype=torch.float64)
        ref, _ = _step(net, method, "loop", mode, x, y)
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), (mode, method)
        assert torch.equal(ranks[1][mode, method], got)  # every rank applies the same update
