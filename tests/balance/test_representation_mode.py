"""Representation mode is the method applied to partial derivatives w.r.t. a cut of the graph.

For every registered architecture (on its own network, a dilated ResNet and ``wrn28``, where it
builds) that supports representation mode, one trainer step (:class:`~mtlkit.train.step.StepRunner`,
which runs :class:`~mtlkit.balance.Balancer`) is compared with definitions:

* a method that sums the task gradients gives exactly the gradient of the summed losses, for
  every parameter (MTAN's encoder tensors are computed from each other: back-propagating total
  derivatives w.r.t. each of them used to give a relative error of 15);
* PCGrad and MGDA give their pure functions applied to a K x D matrix built one entry block at a
  time: for task k and feature i, ``autograd.grad`` of L_k w.r.t. a detached copy of feature i
  alone (the partial derivative), the update then back-propagated through ``encode``.

Architectures without such a cut refuse representation mode with a one-line ConfigError. The
public API's checks (features computed from each other; losses that bypass the features) are
tested on a small network.

The comparisons run in float64. The step and the reference perform the same float64 operations,
summed in another order (per task at the features, then through the encoder, instead of inside
each parameter's accumulation). Reordering a sum of n terms changes it by at most about
n u sum|terms| (u = 1.1e-16); the longest accumulations here are a convolution's weight
gradient over batch x pixels (n ~ 2 x 32 x 32 = 2e3) chained through ~30 layers, so the gradients
agree to ~ 30 x 2e3 x u ~ 7e-12 relative to their terms: ``SUM_TOL = 1e-9`` leaves two orders for
cancellation between the terms and is nine orders below the old error. The K x D matrices of the
step and of the reference therefore agree to SUM_TOL; PCGrad's and MGDA's K x K computations are
continuous in the matrix away from their branch points (a sign test, a Frank-Wolfe stop, which a
1e-9 perturbation does not reach here), and their weights magnify a relative perturbation of the
Gramian by at most its condition number: the tolerance is SUM_TOL x cond(G G^T), computed per case
(between 1 and 30 on these networks).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor

from mtlkit.balance import FeatureCut, check_cut
from mtlkit.errors import ConfigError
from mtlkit.models import build_model, model_class
from mtlkit.models.base import MultiTaskModel
from mtlkit.registry import ARCHITECTURES, WEIGHTINGS
from mtlkit.tasks import Task, classification_task, depth_task, normal_task, segmentation_task
from mtlkit.train.step import StepRunner
from mtlkit.weighting._common import new_generator
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.functional import mgda, pcgrad

SUM_TOL = 1e-9
DENSE = [segmentation_task(5), depth_task(), normal_task()]
CLASSES = [classification_task("a", 5), classification_task("b", 3)]
#: backbone (None: the architecture's own network) -> (width, input height, input width); wrn28's
#: official pooling needs 57-120 pixels
SIZES = {None: (0.0625, 32, 32), "resnet18_dilated": (0.125, 24, 32), "wrn28": (0.125, 64, 64)}
SEED = 5  # re-seeded before every forward: the heads' dropout draws the same masks in each


def _build(arch: str, backbone: str | None) -> tuple[MultiTaskModel, list[Task]] | None:
    """A tiny float64 ``arch`` on ``backbone`` with tasks it accepts; None when the pair does not exist."""
    try:
        model_class(arch, backbone)
    except ConfigError:
        return None
    width = SIZES[backbone][0]
    for tasks in (DENSE, CLASSES):
        torch.manual_seed(0)
        try:
            model = build_model(arch, tasks, width, backbone=backbone)
        except ConfigError:
            continue
        model.set_epoch(0, 200)
        return model.double(), tasks
    return None


def _models() -> dict[tuple[str, str | None], tuple[MultiTaskModel, list[Task]]]:
    """Every (architecture, backbone) pair that builds, with its tiny model (steps at lr 0 leave it as is)."""
    out = {}
    for arch in sorted(ARCHITECTURES.names()):
        for backbone in SIZES:
            built = _build(arch, backbone)
            if built is not None:
                out[(arch, backbone)] = built
    return out


MODELS = _models()
SUPPORTED = [pair for pair, (model, _) in MODELS.items() if model.supports_representation]
REFUSED = [pair for pair, (model, _) in MODELS.items() if not model.supports_representation]


def _batch(tasks: list[Task], backbone: str | None) -> dict[str, Tensor]:
    _, h, w = SIZES[backbone]
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)}
    for t in tasks:
        if t.kind == "segmentation":
            batch[t.name] = torch.randint(0, t.channels, (2, h, w), generator=g)
        elif t.kind == "depth":
            batch[t.name] = torch.rand(2, 1, h, w, generator=g, dtype=torch.float64) + 0.5
        elif t.kind == "normal":
            batch[t.name] = torch.nn.functional.normalize(
                torch.randn(2, 3, h, w, generator=g, dtype=torch.float64), dim=1
            )
        else:
            batch[t.name] = torch.randint(0, t.channels, (2,), generator=g)
    return batch


class Sum(Weighting):
    """The linear aggregator: the update is the sum of the task gradients."""

    needs_gradients = True

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        return grads.sum(0)


def _step_grads(model: MultiTaskModel, method: Weighting, tasks: list[Task], batch: dict[str, Tensor]) -> list[Tensor]:
    """Every parameter's ``.grad`` after one representation-mode trainer step (lr 0: nothing moves)."""
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(SEED)
    StepRunner(model, method, tasks, opt, "representation")(batch)
    return [_grad(p) for p in model.parameters()]


def _grad(p: Tensor) -> Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()


def _losses(model: MultiTaskModel, tasks: list[Task], batch: dict[str, Tensor], reps: list[Tensor]) -> list[Tensor]:
    out = model.decode(reps)
    return [t.loss(out[t.name], batch[t.name]) for t in tasks]


@functools.cache
def _plain(pair: tuple[str, str | None]) -> list[Tensor]:
    """``_plain_grads`` of the pair's model on its batch (shared by the tests of one pair)."""
    model, tasks = MODELS[pair]
    return _plain_grads(model, tasks, _batch(tasks, pair[1]))


def _plain_grads(model: MultiTaskModel, tasks: list[Task], batch: dict[str, Tensor]) -> list[Tensor]:
    """Every parameter's gradient of the summed losses, by plain autograd through the whole model."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    out = model(batch["image"])
    sum(t.loss(out[t.name], batch[t.name]) for t in tasks).backward()
    return [_grad(p) for p in model.parameters()]


def _relative(got: list[Tensor], want: list[Tensor]) -> float:
    a, b = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    return float((a - b).norm() / b.norm())


def _split(model: MultiTaskModel, grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(shared parameters' gradients, the others')."""
    shared = {id(p) for p in model.shared_parameters()}
    params = list(model.parameters())
    return (
        [g for p, g in zip(params, grads) if id(p) in shared],
        [g for p, g in zip(params, grads) if id(p) not in shared],
    )


def _case_id(pair: tuple[str, str | None]) -> str:
    return f"{pair[0]}-{pair[1] or 'own'}"


@pytest.mark.parametrize("pair", SUPPORTED, ids=_case_id)
def test_summing_aggregator_gives_the_plain_gradient(pair):
    model, tasks = MODELS[pair]
    batch = _batch(tasks, pair[1])
    want = _plain(pair)
    got = _step_grads(model, Sum([t.name for t in tasks]), tasks, batch)
    shared_got, own_got = _split(model, got)
    shared_want, own_want = _split(model, want)
    assert _relative(shared_got, shared_want) < SUM_TOL
    assert _relative(own_got, own_want) < SUM_TOL


@functools.cache
def _one_by_one(pair: tuple[str, str | None]) -> tuple[Tensor, Tensor]:
    """(K x D matrix of partial derivatives, K losses), one task and one feature at a time."""
    model, tasks = MODELS[pair]
    batch = _batch(tasks, pair[1])
    rows, values = [], []
    for k in range(len(tasks)):
        torch.manual_seed(SEED)
        reps = model.encode(batch["image"])
        copies = [r.detach().requires_grad_(True) for r in reps]
        loss = _losses(model, tasks, batch, copies)[k]
        row = []
        for i, copy in enumerate(copies):
            (g,) = torch.autograd.grad(loss, copy, retain_graph=i < len(copies) - 1, allow_unused=True)
            row.append(torch.zeros_like(copy) if g is None else g)
        rows.append(torch.cat([g.flatten() for g in row]))
        values.append(loss.detach())
    return torch.stack(rows), torch.stack(values)


def _through_encoder(model: MultiTaskModel, batch: dict[str, Tensor], update: Tensor) -> list[Tensor]:
    """The shared parameters' gradient J^T update (J: Jacobian of ``encode``'s tensors)."""
    torch.manual_seed(SEED)
    reps = model.encode(batch["image"])
    chunks = list(update.split([r.numel() for r in reps]))
    shared = list(model.shared_parameters())
    grads = torch.autograd.grad(
        reps, shared, grad_outputs=[c.view_as(r) for c, r in zip(chunks, reps)], allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(shared, grads)]


@pytest.mark.parametrize("name", ["pcgrad", "mgda"])
@pytest.mark.parametrize("pair", SUPPORTED, ids=_case_id)
def test_pcgrad_and_mgda_equal_a_reference_built_one_by_one(pair, name):
    model, tasks = MODELS[pair]
    batch = _batch(tasks, pair[1])
    method = WEIGHTINGS.get(name)([t.name for t in tasks])
    matrix, losses = _one_by_one(pair)
    if name == "pcgrad":
        update, _ = pcgrad(matrix, new_generator(0))  # the method's default seed, before any draw
    else:
        update, _ = mgda(matrix, method.normalization, losses)
    gram = matrix @ matrix.T
    eig = torch.linalg.eigvalsh(gram)
    tol = SUM_TOL * max(1.0, float(eig[-1] / eig[0]))
    want_shared = _through_encoder(model, batch, update)
    _, want_own = _split(model, _plain(pair))  # the others: their tasks' sum
    got_shared, got_own = _split(model, _step_grads(model, method, tasks, batch))
    assert _relative(got_shared, want_shared) < tol
    assert _relative(got_own, want_own) < SUM_TOL


@pytest.mark.parametrize("pair", REFUSED, ids=_case_id)
def test_architectures_without_a_cut_refuse_representation_mode(pair):
    model, tasks = MODELS[pair]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ConfigError, match="has no shared representation; use weighting.mode=parameters") as err:
        StepRunner(model, WEIGHTINGS.get("mgda")([t.name for t in tasks]), tasks, opt, "representation")
    assert "\n" not in str(err.value)


def test_every_architecture_is_covered_and_mtan_is_among_the_supported():
    covered = {arch for arch, _ in SUPPORTED + REFUSED}
    assert covered == set(ARCHITECTURES.names())
    assert {("mtan", None), ("mtan", "resnet18_dilated"), ("dense", None)} <= set(SUPPORTED)
    assert ("mtan", "wrn28") in REFUSED  # its shared f blocks run after encode's tensors


class _Chain(torch.nn.Module):
    """A trunk whose two features are computed one from the other, and two linear heads."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(8, 1) for _ in range(2)])

    def encode(self, x: Tensor) -> list[Tensor]:
        f1 = torch.tanh(self.a(x))
        return [f1, torch.tanh(self.b(f1))]

    def losses(self, feats: list[Tensor]) -> list[Tensor]:
        h = torch.cat(feats, dim=1)
        return [head(h).pow(2).mean() for head in self.heads]


def test_public_backward_with_a_feature_cut_is_exact_and_refuses_chained_features():
    import mtlkit

    torch.manual_seed(0)
    net, x = _Chain().double(), torch.randn(6, 4, dtype=torch.float64)
    shared = [*net.a.parameters(), *net.b.parameters()]
    sum(net.losses(net.encode(x))).backward()
    want = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    cut = mtlkit.FeatureCut(net.encode(x))
    mtlkit.backward(net.losses(cut), shared_params=shared, features=cut, weighting=Sum(["t0", "t1"]))
    assert _relative([p.grad for p in net.parameters()], want) < SUM_TOL
    with pytest.raises(ValueError, match=r"features\[1\] is computed from features\[0\].*FeatureCut"):
        feats = net.encode(x)
        mtlkit.backward(net.losses(feats), shared_params=shared, features=feats, weighting="mgda")
    with pytest.raises(ValueError, match=r"features\[1\] is features\[0\] again"):
        f = net.encode(x)[0]
        check_cut([f, f])


def test_public_backward_refuses_losses_that_bypass_the_features():
    torch.manual_seed(0)
    net, x = _Chain().double(), torch.randn(6, 4, dtype=torch.float64)
    shared = [*net.a.parameters(), *net.b.parameters()]
    cut = FeatureCut(net.encode(x))
    # the heads read the encoder's own tensors, not the cut's copies: every path bypasses the cut
    with pytest.raises(ValueError, match=r"losses reach 4 shared parameter\(s\).*other than through the features"):
        from mtlkit.balance import backward

        backward(net.losses(cut.sources), shared_params=shared, features=cut, weighting="pcgrad")
    # features that cut only one of the two paths (f1 alone, the loss also reading f2 = b(f1))
    f1 = torch.tanh(net.a(x))
    losses = net.losses([f1, torch.tanh(net.b(f1))])
    with pytest.raises(ValueError, match=r"losses reach 2 shared parameter\(s\)"):
        backward(losses, shared_params=shared, features=[f1], weighting="pcgrad")
