"""One optimisation step, the only place that knows how a weighting method meets a model.

Loss-level methods: back-propagate ``weighting.combine(losses)``. Gradient-level methods: the K x D
matrix of per-task gradients (w.r.t. the shared parameters, or the shared representation returned
by ``model.encode``) goes to ``weighting.aggregate``; its D-vector becomes the shared update, and
task-specific parameters get the gradient of their own task's loss. In representation mode
``decode`` reads a :class:`~mtlkit.balance.FeatureCut` of ``encode``'s tensors (detached copies), so
the per-task gradients are partial derivatives even where those tensors are computed from each
other (MTAN), and the update is back-propagated once through the shared part.

Under DistributedDataParallel (see :mod:`mtlkit.train.distributed`): loss-level methods combine
the global mean losses (each rank's own gradient, averaged by DDP); gradient-level methods bypass
DDP's hooks, average the per-task gradient matrix across ranks (parameter mode) or gather the
ranks' representation gradients into the global one (representation mode), and average the
task-specific gradients themselves, so every rank applies the same update, the one a single
process with the same global batch would apply.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtlkit.balance import Balancer, FeatureCut
from mtlkit.errors import ConfigError, TrainingError
from mtlkit.models.base import MultiTaskModel
from mtlkit.tasks import Task
from mtlkit.train import distributed as dist
from mtlkit.weighting.base import Weighting


@dataclass
class StepRunner:
    """Holds what every step needs; ``__call__`` runs one step and returns the K detached losses."""

    model: nn.Module
    weighting: Weighting
    tasks: list[Task]
    optimizer: torch.optim.Optimizer
    mode: str = "parameters"
    grad_clip: float | None = None
    autocast_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    grad_path: str = "loop"
    _names: list[str] = field(init=False)
    _balancer: Balancer = field(init=False)

    def __post_init__(self) -> None:
        self._names = [t.name for t in self.tasks]
        self._balancer = Balancer(self.weighting)
        self._balancer.strategy = self.grad_path
        check_mode(self.core, self.weighting, self.mode)

    @property
    def core(self) -> MultiTaskModel:
        """The model under any DistributedDataParallel / compile wrapper."""
        m = dist.unwrap_ddp(self.model)
        return getattr(m, "_orig_mod", m)

    @property
    def plain(self) -> nn.Module:
        """The model without DDP (compiled if it was): gradient methods call it, bypassing DDP's hooks."""
        return dist.unwrap_ddp(self.model)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor], present: list[str]) -> Tensor:
        """The K-vector of task losses; tasks absent from the batch count 0 (constant)."""
        out = []
        for t in self.tasks:
            if t.name in present:
                out.append(t.loss(preds[t.name], batch[t.name]))
            else:
                out.append(torch.zeros((), device=batch["image"].device))
        return torch.stack(out)

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        x = batch["image"]
        present = [n for n in self._names if n in batch]
        self.optimizer.zero_grad(set_to_none=True)
        if self.weighting.needs_gradients:
            if len(present) != len(self._names):
                raise TrainingError(
                    f"{type(self.weighting).__name__} needs every task in every batch; this dataset "
                    "gives one task per batch: use a loss-level weighting such as equal"
                )
            losses = self._gradient_step(x, batch, present)
        else:
            with self._autocast(x.device):
                preds = self.model(x, present) if len(present) < len(self._names) else self.model(x)
            losses = self.losses(preds, batch, present)
            shared = dist.globalize(losses)
            _check_finite(shared, self._names)
            total = self.weighting.combine(shared)
            self._backward(total)
        self._finish()
        return losses.detach()

    def _backward(self, total: Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()

    def _finish(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _gradient_step(self, x: Tensor, batch: dict[str, Tensor], present: list[str]) -> Tensor:
        """Per-task gradients aggregated by the method (:class:`mtlkit.balance.Balancer`, as users call it)."""
        core = self.core
        with self._autocast(x.device):
            if self.mode == "representation":
                # the decoders read detached copies, so per-task gradients are partial derivatives
                features: FeatureCut | None = FeatureCut(core.encode(x))
                preds = core.decode(features)
            else:
                features = None
                preds = self.plain(x)
        per_task = [t.loss(preds[t.name], batch[t.name]) for t in self.tasks]
        losses = torch.stack([loss.detach() for loss in per_task])
        shared_losses = dist.all_reduce_mean(losses)
        _check_finite(shared_losses, self._names)
        shared = [p for p in core.shared_parameters() if p.requires_grad]
        shared_ids = {id(p) for p in shared}
        own = [p for p in core.parameters() if p.requires_grad and id(p) not in shared_ids]
        self._balancer.backward(per_task, shared, features=features, task_params=own, scaler=self.scaler,
                                shared_losses=shared_losses)
        return losses


def check_mode(model: MultiTaskModel, weighting: Weighting, mode: str) -> None:
    """A ConfigError when a gradient-level method cannot run with this model in ``weighting.mode``.

    ``parameters`` needs shared parameters (a single-task model has none: the method would balance
    nothing), ``representation`` a shared representation and a method that supports it.
    """
    if not weighting.needs_gradients:
        return
    if mode == "parameters" and not any(p.requires_grad for p in model.shared_parameters()):
        raise ConfigError(
            f"weighting.name: {type(weighting).__name__} balances gradients of shared parameters, and "
            f"architecture {type(model).__name__} has none; use a loss-level method such as equal"
        )
    if mode != "representation":
        return
    if not model.supports_representation:
        raise ConfigError(
            f"weighting.mode=representation: architecture {type(model).__name__} has no shared "
            "representation; use weighting.mode=parameters"
        )
    if not weighting.supports_representation:
        raise ConfigError(
            f"weighting.mode=representation is not supported by {type(weighting).__name__}; "
            "use weighting.mode=parameters"
        )


def _check_finite(losses: Tensor, names: list[str]) -> None:
    if not torch.isfinite(losses).all():
        bad = [f"{n}={v:.4g}" for n, v in zip(names, losses.detach().tolist()) if not torch.isfinite(torch.tensor(v))]
        raise TrainingError(f"non-finite training loss ({', '.join(bad)})")
