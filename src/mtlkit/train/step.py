"""One optimisation step, the only place that knows how a weighting method meets a model.

A step is the forward pass, :meth:`mtlkit.balance.Balancer.backward` (the code users call in their
own loops: it fills ``.grad`` the way the method says) and the optimizer step. Loss-level methods:
back-propagate ``weighting.combine(losses)``. Gradient-level methods: the K x D
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
process with the same global batch would apply. With partially labelled data the ranks first
agree on the step's tasks (those with a labelled sample on any rank) and weigh each rank's loss
by its share of the labelled samples (:func:`step_presence`), so that holds there too.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from mtlkit.balance import Balancer, FeatureCut, NonFiniteLossError
from mtlkit.errors import ConfigError, TrainingError
from mtlkit.models.base import MultiTaskModel
from mtlkit.tasks import Task

# present_tasks and task_loss live in tasks.base (Auto-Lambda's meta step uses them too); still importable here
from mtlkit.tasks.base import labelled_key, present_tasks, task_loss
from mtlkit.train import distributed as dist
from mtlkit.weighting.base import Weighting


@dataclass
class StepRunner:
    """One step: forward, then :class:`~mtlkit.balance.Balancer` (the method fills ``.grad``), then the optimizer.

    ``__call__`` runs a step and returns the K detached losses. ``grad_path`` is the config's
    ``weighting.grad_path`` (how a gradient-level method's per-task gradients are computed).
    """

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
    #: the tasks of the last step (those with a labelled sample in its batch, on any process)
    present: list[str] = field(init=False, default_factory=list)
    #: the factor each task's local loss is scaled by in this step (:func:`step_presence`; empty: 1 for all)
    _scales: dict[str, float] = field(init=False, default_factory=dict)
    _balancer: Balancer = field(init=False)

    def __post_init__(self) -> None:
        self._names = [t.name for t in self.tasks]
        self._balancer = Balancer(self.weighting, grad_path=self.grad_path)
        check_mode(self.core, self.weighting, self.mode)

    @property
    def core(self) -> MultiTaskModel:
        """The model under any DistributedDataParallel / compile wrapper."""
        m = dist.unwrap_ddp(self.model)
        return cast(MultiTaskModel, getattr(m, "_orig_mod", m))

    @property
    def plain(self) -> nn.Module:
        """The model without DDP (compiled if it was): gradient methods call it, bypassing DDP's hooks."""
        return dist.unwrap_ddp(self.model)

    def _autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor], present: list[str]) -> list[Tensor]:
        """The losses of the ``present`` tasks (task order), each with its own graph, over their labelled samples
        (scaled by their :func:`step_presence` factor under several processes)."""
        return [self._task_loss(t, preds, batch) for t in self.tasks if t.name in present]

    def _task_loss(self, task: Task, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        scale = self._scales.get(task.name, 1.0)
        if scale == 0.0:  # no labelled sample here but some on another process: a 0 that keeps the head's graph
            return preds[task.name].sum() * 0.0
        loss = task_loss(task, preds[task.name], batch)
        return loss if scale == 1.0 else loss * scale

    def losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor], present: list[str]) -> Tensor:
        """The vector of the present tasks' losses (what a loss-level method combines)."""
        return torch.stack(self.task_losses(preds, batch, present))

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        """One step on ``batch``; the K detached losses (0 for a task with no labelled sample in it)."""
        x = batch["image"]
        present, self._scales = step_presence(self._names, batch)
        self.present = present
        self.optimizer.zero_grad(set_to_none=True)
        if not present:  # no labelled sample of any task (partially labelled data): nothing to learn, no update
            self.weighting.last_weights = torch.zeros_like(self.weighting.last_weights)
            return torch.zeros(len(self._names), device=x.device)
        preds, features = self._forward(x, present)
        shared: list[Tensor] | None = None
        own: list[Tensor] | None = None
        if self.weighting.needs_gradients:
            # a gradient-level method differentiates each task's loss on its own
            losses: list[Tensor] | Tensor = self.task_losses(preds, batch, present)
            core = self.core
            shared = [p for p in core.shared_parameters() if p.requires_grad]
            shared_ids = {id(p) for p in shared}
            own = [p for p in core.parameters() if p.requires_grad and id(p) not in shared_ids]
        else:
            losses = self.losses(preds, batch, present)
        subset = present if len(present) < len(self._names) else None
        try:
            values = self._balancer.backward(
                losses, shared, features=features, task_params=own, scaler=self.scaler, present=subset
            )
        except NonFiniteLossError as err:
            raise TrainingError(f"non-finite training loss ({', '.join(err.bad)})") from None
        except ValueError as err:
            if subset is None or "cannot drop a task" not in str(err):
                raise
            raise TrainingError(
                f"{err} (this batch lacks {', '.join(n for n in self._names if n not in present)})"
            ) from None
        self._finish()
        return values

    def _forward(self, x: Tensor, present: list[str]) -> tuple[dict[str, Tensor], FeatureCut | None]:
        """The predictions, and the cut of the shared representation the method differentiates against.

        Loss-level methods run the (DDP-wrapped) model; gradient-level ones bypass DDP's hooks
        (:attr:`plain`), and in representation mode ``decode`` reads a :class:`FeatureCut` of
        ``encode``'s tensors (detached copies), so per-task gradients are partial derivatives.
        """
        with self._autocast(x.device):
            if not self.weighting.needs_gradients:
                return (self.model(x, present) if len(present) < len(self._names) else self.model(x)), None
            subset = present if len(present) < len(self._names) else None
            if self.mode == "representation":
                core = self.core
                features = FeatureCut(core.encode(x))
                return core.decode(features, subset), features
            return (self.plain(x, subset) if subset else self.plain(x)), None

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


def step_presence(names: list[str], batch: dict[str, Tensor]) -> tuple[list[str], dict[str, float]]:
    """The tasks of a step, and the factor each one's loss on this process is scaled by.

    One process: the tasks with a labelled sample in the batch (:func:`present_tasks`), factor 1
    (an empty dict). Several (torchrun): the tasks with a labelled sample on any process, the same
    list on every process, so all run the same collectives and the method sees the same tasks; and
    for task k on process i, whose loss L_ik is the mean over its c_ik labelled samples, the factor
    W c_ik / sum_j c_jk. The mean over the W processes of the scaled losses (the globalised loss
    values, and what DDP's averaged gradients differentiate) is then sum_i c_ik L_ik / sum_i c_ik,
    each labelled sample counted once: one process's loss on the global batch when the samples have
    as many valid pixels each. A process with no labelled sample of a present task gets factor 0 (a
    zero loss on the head's output, so every process computes the same heads). With every sample
    labelled every factor is exactly 1 and the step is the one without partial labels.
    """
    if dist.world_size() == 1:
        return present_tasks(names, batch), {}
    images = batch["image"]
    counts = torch.tensor([float(_labelled_count(n, batch)) for n in names], dtype=torch.float64, device=images.device)
    total = dist.all_reduce_sum(counts).tolist()
    world = dist.world_size()
    present = [n for n, t in zip(names, total) if t > 0]
    scales = {n: world * c / t for n, c, t in zip(names, counts.tolist(), total) if t > 0}
    return present, scales


def _labelled_count(name: str, batch: dict[str, Tensor]) -> int:
    """How many samples of ``batch`` carry task ``name``'s label (0 when the batch lacks the task)."""
    if name not in batch:
        return 0
    mask = batch.get(labelled_key(name))
    return int(batch["image"].shape[0]) if mask is None else int(mask.sum())


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
