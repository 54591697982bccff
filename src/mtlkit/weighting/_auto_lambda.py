"""Auto-Lambda (Liu, Johns & Davison, TMLR 2022): task weights learned by a one-step look-ahead.

Paper: [Auto-Lambda: Disentangling Dynamic Task Relationships](https://arxiv.org/abs/2202.03091), TMLR 2022.

The weights lambda scale the task losses of any other method (``base``, default ``equal``); before
each training step, :class:`MetaSplit` moves lambda along the meta-gradient of the loss on a held-out
meta batch after one virtual SGD step. The meta batches come from a fraction of the *training* set
that is then not trained on (never the validation split that is reported); the run's results say
which fraction and how many images.

Partially labelled data: every loss is taken over the labelled samples of its task
(:func:`mtlkit.tasks.base.task_loss`), in the meta step as in the training step, and a task with
no labelled sample in the training batch neither takes the virtual step nor gets a meta-gradient
(its lambda and Adam moments stay as they are); see :class:`AutoLambda`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset, Subset, default_collate

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks.base import present_tasks, task_loss
from mtlkit.weighting._common import positive_float
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradients import per_task_gradients, unflatten_like


def _look_ahead(
    model: nn.Module,
    tasks: list,
    lam: Tensor,
    train_batch: dict[str, Tensor],
    meta_batch: dict[str, Tensor],
    lr: float,
) -> tuple[Tensor, list[int]]:
    """(meta-gradient, task indices): :func:`meta_gradient`'s entries of the tasks that get one, and which they are.

    A task takes part when it has a labelled sample in the training batch
    (:func:`~mtlkit.tasks.base.present_tasks`); none does, or no task has a labelled sample in the
    meta batch (the meta loss would be a constant 0): an empty gradient and ``[]``.
    """
    names = [t.name for t in tasks]
    in_train, in_meta = set(present_tasks(names, train_batch)), set(present_tasks(names, meta_batch))
    idx = [i for i, n in enumerate(names) if n in in_train]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    pnames, params = [n for n, _ in named], [p for _, p in named]
    if not idx or not in_meta:
        ref = params[0] if params else lam
        return torch.zeros(0, dtype=ref.dtype, device=ref.device), []
    lam_step = lam if len(idx) == len(tasks) else lam[idx]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    preds = functional_call(model, ({**dict(named), **buffers}), (train_batch["image"],))
    losses = [task_loss(tasks[i], preds[tasks[i].name], train_batch) for i in idx]
    grads = per_task_gradients(losses, params, strategy="loop", key=("auto_lambda", len(params)))
    step = unflatten_like(lam_step.to(grads) @ grads, params)
    virtual = {n: (p.detach() - lr * s).requires_grad_(True) for n, p, s in zip(pnames, params, step)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    meta_preds = functional_call(model, ({**virtual, **buffers}), (meta_batch["image"],))
    meta_loss = cast(Tensor, sum(task_loss(t, meta_preds[t.name], meta_batch) for t in tasks if t.name in in_meta))
    v = torch.autograd.grad(meta_loss, list(virtual.values()), allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(v, params)])
    return -lr * (grads @ flat.to(grads)), idx


def meta_gradient(
    model: nn.Module,
    tasks: list,
    lam: Tensor,
    train_batch: dict[str, Tensor],
    meta_batch: dict[str, Tensor],
    lr: float,
) -> Tensor:
    """d L_meta(theta') / d lambda for theta' = theta - lr sum_k lambda_k grad L_k(theta; train).

    The training objective is linear in lambda, so the paper's finite-difference Hessian-vector
    product is exact here as an inner product: dL_meta/dlambda_k = -lr grad L_k(theta) . v with
    v = grad L_meta(theta'), L_meta the sum of the task losses on the meta batch. All trainable
    parameters take the virtual step (the authors' choice); BatchNorm running statistics are
    updated on copies, so the model is left untouched.

    Partially labelled batches (``"<task>/labelled"`` masks): each loss is over its task's labelled
    samples (:func:`~mtlkit.tasks.base.task_loss`); the sum over k and L_meta run over the tasks with
    a labelled sample in the training and the meta batch respectively. A task with none in the
    training batch gets 0 (lambda_k multiplies no loss: theta' does not depend on it), and so does
    every task when no task has one in the meta batch.
    """
    grad, idx = _look_ahead(model, tasks, lam, train_batch, meta_batch, lr)
    if len(idx) == len(tasks):
        return grad
    out = torch.zeros(len(tasks), dtype=grad.dtype, device=grad.device)
    out[idx] = grad
    return out


@WEIGHTINGS.register("auto_lambda")
class AutoLambda(Weighting):
    r"""Auto-Lambda: L = base(lambda_k L_k), lambda moved by Adam on the one-step look-ahead meta loss.

    The method `base` combines the $\lambda$-weighted losses $\lambda_k L_k$ (or their gradients).

    Before each step $\lambda$ moves along $-\mathrm{lr}\, g_k(\text{train}) \cdot \nabla L_{\text{meta}}(\theta')$,
    the exact meta-gradient after one virtual SGD step $\theta' = \theta - \mathrm{lr} \sum_k \lambda_k g_k$.

    Options: `autol_init` (0.1, the paper's dense-prediction value), `autol_lr` (1e-4, its NYUv2 value),
    `meta_fraction` (0.1: the share of the training set held out for meta batches), `base` (`equal`:
    the method that combines the lambda-weighted losses or gradients; `cagrad` gives the paper's
    best NYUv2 row), `base_options` ({}). Every task is a primary task (the paper's "all" setting).
    $\lambda$ and its Adam moments are buffers, the meta step count and each $\lambda_k$'s Adam step
    count are extra state (checkpointed: meta batches are drawn from the meta step count, so a resumed
    run draws the same ones). Not under several processes (each would draw its own meta batch and the
    weights would differ).

    Absent tasks (partially labelled data): inside :meth:`Weighting.only` the base method runs
    restricted to the present tasks too (``base.only``) on their $\lambda_k L_k$ (``select(lam)``),
    so a step is exactly Auto-Lambda over the present tasks alone; an absent task gets weight 0. In the
    meta step every loss is over its task's labelled samples only; the tasks with no labelled
    sample in the training batch neither take the virtual step nor get a meta-gradient ($\theta'$ does
    not depend on their $\lambda_k$: the derivative is exactly 0), and Adam updates only the
    $\lambda_k$ and moments of the tasks that got one, as SparseAdam does; $L_{\text{meta}}$ sums the
    tasks with a labelled sample in the meta batch. Each $\lambda_k$'s bias correction counts its own
    Adam steps, so its Adam is the one it would have run on the meta steps its task took part in. A
    meta step with no task in the training batch, or none in the meta batch, updates nothing but
    still counts (the next step draws another meta batch). A `base` that cannot drop a task
    (`handles_absent_tasks` False) makes Auto-Lambda refuse the same way: it takes the base's value.

    Guarantees: with `autol_lr` $\to 0$ it is `base` on `autol_init`-scaled losses; $\lambda$ moves against
    $\partial L_{\text{meta}} / \partial \lambda$, i.e. it grows for tasks whose gradient helps the meta loss.
    """

    display_name = "Auto-Lambda"

    properties = frozenset({"permutation_equivariant"})
    supports_distributed = False
    needs_meta_step = True
    distributed_note = "its meta step draws one meta batch per process, so the task weights would differ"

    lam: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor

    def __init__(
        self,
        task_names: list[str],
        autol_init: float = 0.1,
        autol_lr: float = 1e-4,
        meta_fraction: float = 0.1,
        base: str = "equal",
        base_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task_names)
        if base == "auto_lambda":
            raise ConfigError("weighting.options.base cannot be auto_lambda itself")
        try:
            self.base = WEIGHTINGS.get(base)(task_names, **(base_options or {}))
        except TypeError as err:
            raise ConfigError(f"weighting.options.base_options for {base!r}: {err}") from None
        self.needs_gradients = self.base.needs_gradients
        self.gramian_only = self.base.gramian_only
        self.supports_representation = self.base.supports_representation
        self.min_tasks = self.base.min_tasks
        # lambda and its moments restrict to any subset of the tasks: Auto-Lambda drops a task when its base can
        self.handles_absent_tasks = self.base.handles_absent_tasks
        self.absent_note = f"its base {base}: {self.base.absent_note}"
        self.autol_lr = positive_float("autol_lr", autol_lr)
        fraction = positive_float("meta_fraction", meta_fraction)
        if fraction >= 1:
            raise ConfigError(f"weighting.options.meta_fraction must be in (0, 1), got {meta_fraction!r}")
        self.meta_fraction = fraction
        k = self.num_tasks
        self.register_buffer("lam", torch.full((k,), positive_float("autol_init", autol_init)))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        #: meta steps run (every call of :meth:`apply_meta_gradient`): the meta batch is drawn from it
        self.meta_steps = 0
        #: Adam steps of each lambda_k (the meta steps its task took part in): its bias correction
        self.lam_steps = [0] * k

    def _base_only(self) -> AbstractContextManager[None]:
        """The base method restricted to the tasks of the step (inside :meth:`only`), else as it is."""
        return nullcontext() if self.present is None else self.base.only(self.present)

    def combine(self, losses: Tensor) -> Tensor:
        """The base method on the lambda-weighted losses (of the present tasks inside :meth:`only`)."""
        lam = self.select(self.lam).to(device=losses.device, dtype=losses.dtype)
        with self._base_only():
            total = self.base.combine(lam * losses)
            self.last_weights = (lam * self.base.last_weights.to(lam)).detach()
        return total

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The base method on the lambda-weighted gradient rows and losses (the present tasks' inside :meth:`only`)."""
        lam = self.select(self.lam).to(device=grads.device)
        with self._base_only():
            d = self.base.aggregate(grads * lam.to(grads.dtype)[:, None], losses * lam.to(losses))
            self.last_weights = (lam.float() * self.base.last_weights.to(lam.device).float()).detach()
        return d

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The base method's weights on the lambda-weighted rows' Gramian, times lambda (the raw rows' weights)."""
        lam_t = self.select(self.lam)
        lam = lam_t.detach().double().cpu()
        with self._base_only():
            w = lam * self.base.weights_from_gramian(
                gramian.double().cpu() * torch.outer(lam, lam), losses * lam_t.to(losses)
            )
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return w

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Pass the epoch's losses on to the base method."""
        self.base.epoch_end(epoch, mean_losses)

    @torch.no_grad()
    def apply_meta_gradient(self, grad: Tensor, tasks: Sequence[int] | None = None) -> None:
        """One Adam step (betas 0.9, 0.999; the authors' optimiser) on the lambdas of ``tasks``.

        ``tasks``: the indices (ascending) of the tasks that got a meta-gradient, ``grad`` their
        entries, one each (None: every task, ``grad`` K entries). The other tasks' lambdas and Adam
        moments are left as they are. Each lambda_k's bias correction counts its own Adam steps
        (``lam_steps``); with every task at every meta step that is the meta step count. ``meta_steps``
        counts every call, one with no task too, so the next meta batch is another one.
        """
        k = self.lam.numel()
        idx = list(range(k)) if tasks is None else [int(i) for i in tasks]
        if idx != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= k)):
            raise ValueError(f"tasks: expected ascending distinct task indices in [0, {k}), got {idx}")
        grad = grad.to(self.lam).reshape(-1)
        if grad.numel() != len(idx):
            raise ValueError(f"grad: {grad.numel()} entries for the {len(idx)} tasks {idx}")
        self.meta_steps += 1
        groups: dict[int, list[int]] = {}  # Adam step count -> positions in idx: one bias correction each
        for pos, i in enumerate(idx):
            self.lam_steps[i] += 1
            groups.setdefault(self.lam_steps[i], []).append(pos)
        for steps, at in groups.items():
            self._adam_step([idx[p] for p in at], grad if len(at) == len(idx) else grad[at], steps)

    def _adam_step(self, rows: list[int], grad: Tensor, steps: int) -> None:
        """Adam on the entries ``rows`` of lambda (their gradient ``grad``), each at its ``steps``-th step."""
        c1, c2 = 1 - 0.9**steps, 1 - 0.999**steps
        if len(rows) == self.lam.numel():  # every task: in place, as before absent tasks were handled
            self.exp_avg.mul_(0.9).add_(grad, alpha=0.1)
            self.exp_avg_sq.mul_(0.999).addcmul_(grad, grad, value=0.001)
            self.lam -= self.autol_lr * (self.exp_avg / c1) / ((self.exp_avg_sq / c2).sqrt() + 1e-8)
            return
        r = torch.tensor(rows, device=self.lam.device)
        m = self.exp_avg[r].mul_(0.9).add_(grad, alpha=0.1)
        v = self.exp_avg_sq[r].mul_(0.999).addcmul_(grad, grad, value=0.001)
        self.exp_avg[r], self.exp_avg_sq[r] = m, v
        self.lam[r] = self.lam[r] - self.autol_lr * (m / c1) / ((v / c2).sqrt() + 1e-8)

    def get_extra_state(self) -> dict[str, Any]:
        """The meta step count and each lambda's Adam step count."""
        return {"meta_steps": self.meta_steps, "lam_steps": list(self.lam_steps)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the step counts (a checkpoint without ``lam_steps`` updated every lambda at every meta step)."""
        self.meta_steps = int(state.get("meta_steps", 0))
        steps = state.get("lam_steps")
        k = self.lam.numel()
        self.lam_steps = [self.meta_steps] * k if steps is None else [int(n) for n in steps]
        if len(self.lam_steps) != k:
            raise ValueError(f"Auto-Lambda state: lam_steps has {len(self.lam_steps)} entries for {k} tasks")


class MetaStepMethod(Protocol):
    """What the meta split reads and calls on a method that declares ``needs_meta_step`` (AutoLambda)."""

    meta_fraction: float
    lam: Tensor
    meta_steps: int

    def apply_meta_gradient(self, grad: Tensor, tasks: Sequence[int] | None = None) -> None: ...


class MetaSplit:
    """The meta split of the training set and the meta step the trainer runs before each batch."""

    def __init__(self, method: MetaStepMethod, dataset: Dataset, seed: int, batch_size: int) -> None:
        n = len(dataset)  # type: ignore[arg-type]  # map-style datasets have a length
        n_meta = max(1, round(method.meta_fraction * n))
        if n - n_meta < 1:
            raise ConfigError(
                f"weighting.options.meta_fraction={method.meta_fraction} leaves no training images out of {n}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        self.meta = Subset(dataset, sorted(order[:n_meta]))
        self.train = Subset(dataset, sorted(order[n_meta:]))
        self.method, self.seed, self.batch_size = method, seed, min(batch_size, n_meta)

    def describe(self) -> dict[str, Any]:
        """What the run's results record about the split."""
        return {
            "source": "train",
            "fraction": self.method.meta_fraction,
            "meta_images": len(self.meta),
            "train_images": len(self.train),
        }

    def meta_batch(self, device: torch.device) -> dict[str, Tensor]:
        """The meta batch of the current meta step, drawn from (seed, step) alone (resumes exactly)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.method.meta_steps)
        idx = torch.randperm(len(self.meta), generator=gen)[: self.batch_size].tolist()
        batch = default_collate([self.meta[i] for i in idx])
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def step(self, model: nn.Module, tasks: list, batch: dict[str, Tensor], lr: float) -> None:
        """One meta update of lambda from this training batch and a meta batch.

        Partially labelled batches pass as they are (the meta batch is collated with its
        ``"<task>/labelled"`` masks): only the tasks with a labelled sample in the training batch get
        a meta-gradient and an Adam step, none when the meta batch has no label.
        """
        meta = self.meta_batch(batch["image"].device)
        grad, idx = _look_ahead(model, tasks, self.method.lam, batch, meta, lr)
        self.method.apply_meta_gradient(grad, idx)


def meta_split(
    method: Weighting, dataset: Dataset, seed: int, batch_size: int, custom_batches: bool = False
) -> tuple[Dataset, MetaSplit | None]:
    """(training set, meta split): the split for a bilevel method, else (dataset, None)."""
    if not method.needs_meta_step:
        return dataset, None
    if custom_batches:
        raise ConfigError(
            "weighting.name: auto_lambda draws its meta batches at random from a split of the training set, "
            "which would mix the domains of this dataset: it batches one task at a time"
        )
    split = MetaSplit(cast(MetaStepMethod, method), dataset, seed, batch_size)
    return split.train, split
