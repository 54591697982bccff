"""Auto-Lambda (Liu, Johns & Davison, TMLR 2022): task weights learned by a one-step look-ahead.

Paper: [Auto-Lambda: Disentangling Dynamic Task Relationships](https://arxiv.org/abs/2202.03091), TMLR 2022.

The weights lambda scale the task losses of any other method (``base``, default ``equal``); before
each training step, :class:`MetaSplit` moves lambda along the meta-gradient of the loss on a held-out
meta batch after one virtual SGD step. The meta batches come from a fraction of the *training* set
that is then not trained on (never the validation split that is reported); the run's results say
which fraction and how many images.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset, Subset, default_collate

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting._common import positive_float
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradients import per_task_gradients, unflatten_like


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
    """
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
    $\lambda$ and its Adam moments are buffers, the meta step count is extra state (checkpointed: meta
    batches are drawn from it, so a resumed run draws the same ones). Not under several processes
    (each would draw its own meta batch and the weights would differ).

    Guarantees: with `autol_lr` $\to 0$ it is `base` on `autol_init`-scaled losses; $\lambda$ moves against
    $\partial L_{\text{meta}} / \partial \lambda$, i.e. it grows for tasks whose gradient helps the meta loss.
    """

    display_name = "Auto-Lambda"

    handles_absent_tasks = False
    absent_note = "its task weights and their Adam moments are updated for every task at every meta step"
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
        self.autol_lr = positive_float("autol_lr", autol_lr)
        fraction = positive_float("meta_fraction", meta_fraction)
        if fraction >= 1:
            raise ConfigError(f"weighting.options.meta_fraction must be in (0, 1), got {meta_fraction!r}")
        self.meta_fraction = fraction
        k = self.num_tasks
        self.register_buffer("lam", torch.full((k,), positive_float("autol_init", autol_init)))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.meta_steps = 0

    def combine(self, losses: Tensor) -> Tensor:
        """The base method on the lambda-weighted losses."""
        lam = self.lam.to(device=losses.device, dtype=losses.dtype)
        total = self.base.combine(lam * losses)
        self.last_weights = (lam * self.base.last_weights.to(lam)).detach()
        return total

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The base method on the lambda-weighted gradient rows and losses."""
        lam = self.lam.to(device=grads.device)
        d = self.base.aggregate(grads * lam.to(grads.dtype)[:, None], losses * lam.to(losses))
        self.last_weights = (lam.float() * self.base.last_weights.to(lam.device).float()).detach()
        return d

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The base method's weights on the lambda-weighted rows' Gramian, times lambda (the raw rows' weights)."""
        lam = self.lam.detach().double().cpu()
        w = lam * self.base.weights_from_gramian(
            gramian.double().cpu() * torch.outer(lam, lam), losses * self.lam.to(losses)
        )
        self.last_weights = w.to(device=self.last_weights.device, dtype=torch.float32)
        return w

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Pass the epoch's losses on to the base method."""
        self.base.epoch_end(epoch, mean_losses)

    @torch.no_grad()
    def apply_meta_gradient(self, grad: Tensor) -> None:
        """One Adam step (betas 0.9, 0.999; the authors' optimiser) on lambda."""
        grad = grad.to(self.lam)
        self.meta_steps += 1
        self.exp_avg.mul_(0.9).add_(grad, alpha=0.1)
        self.exp_avg_sq.mul_(0.999).addcmul_(grad, grad, value=0.001)
        m_hat = self.exp_avg / (1 - 0.9**self.meta_steps)
        v_hat = self.exp_avg_sq / (1 - 0.999**self.meta_steps)
        self.lam -= self.autol_lr * m_hat / (v_hat.sqrt() + 1e-8)

    def get_extra_state(self) -> dict[str, Any]:
        """The meta step count."""
        return {"meta_steps": self.meta_steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the meta step count."""
        self.meta_steps = int(state.get("meta_steps", 0))


class MetaStepMethod(Protocol):
    """What the meta split reads and calls on a method that declares ``needs_meta_step`` (AutoLambda)."""

    meta_fraction: float
    lam: Tensor
    meta_steps: int

    def apply_meta_gradient(self, grad: Tensor) -> None: ...


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
        """One meta update of lambda from this training batch and a meta batch."""
        meta = self.meta_batch(batch["image"].device)
        grad = meta_gradient(model, tasks, self.method.lam, batch, meta, lr)
        self.method.apply_meta_gradient(grad)


def meta_split(
    method: Weighting, dataset: Dataset, seed: int, batch_size: int, custom_batches: bool = False
) -> tuple[Dataset, MetaSplit | None]:
    """(training set, meta split): the split for a bilevel method, else (dataset, None)."""
    if not method.needs_meta_step:
        return dataset, None
    if custom_batches:
        raise ConfigError(
            "weighting.name: auto_lambda needs every task in every batch; this dataset batches one task at a time"
        )
    split = MetaSplit(cast(MetaStepMethod, method), dataset, seed, batch_size)
    return split.train, split
