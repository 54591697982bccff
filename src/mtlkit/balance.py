"""A drop-in backward for your own training loop: ``mtlkit.backward(losses, shared_params=...)``.

It fills ``.grad`` the way a weighting method says, then your optimizer steps as usual::

    balancer = mtlkit.Balancer("pcgrad", tasks=["seg", "depth"])
    for batch in loader:
        optimizer.zero_grad()
        out = model(batch["image"])
        losses = [task.loss(out[task.name], batch[task.name]) for task in tasks]
        balancer.backward(losses, shared_params=model.shared_parameters())
        optimizer.step()

Loss-level methods (equal, dwa, uncertainty, ...) back-propagate ``method.combine(losses)``.
Gradient-level methods (pcgrad, mgda, cagrad, ...) take the K per-task gradients w.r.t.
``shared_params`` (or w.r.t. ``features``, the shared representation, when given: the MGDA-UB
trick), aggregate them into one update written to the shared parameters' ``.grad``, and give
every other parameter the losses reach (found from the autograd graph, or ``task_params``) the
sum of its tasks' gradients. With a GradScaler pass ``scaler=`` and call ``scaler.step`` /
``scaler.update`` as usual: per-task gradients are unscaled before the method sees them. Under
DistributedDataParallel run the forward on the wrapped module's ``.module`` (gradient methods
bypass DDP's hooks): ``backward`` averages the per-task gradients and the task-specific
gradients over the processes itself, so every rank applies the same update. The trainer's step
(:mod:`mtlkit.train.step`) runs this same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import Weighting


class Balancer:
    """A weighting method (by name or instance) and its state across steps; ``backward`` per step."""

    def __init__(self, method: str | Weighting = "equal", tasks: Sequence[str] | int | None = None,
                 mode: str | None = None, **options) -> None:
        if isinstance(method, Weighting):
            if options:
                raise TypeError("options are for a method given by name")
            self.method = method
        else:
            from mtlkit.registry import WEIGHTINGS

            if tasks is None:
                raise TypeError("Balancer(name) needs tasks= (task names, or how many tasks)")
            names = [f"task{i}" for i in range(tasks)] if isinstance(tasks, int) else list(tasks)
            self.method = WEIGHTINGS.get(method)(names, **options)
        self.mode = mode

    @property
    def weights(self) -> Tensor:
        """The task weights of the last step (``method.last_weights``)."""
        return self.method.last_weights

    def backward(
        self,
        losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor,
        shared_params: Sequence[Tensor] | None = None,
        features: Sequence[Tensor] | Tensor | None = None,
        *,
        task_params: Sequence[Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        shared_losses: Tensor | None = None,
    ) -> Tensor:
        """Fill ``.grad`` of the shared and task-specific parameters for ``losses``; returns the K losses.

        ``features``: tensors every task's loss is computed from (computed from the shared
        parameters); given, gradients are taken w.r.t. them and back-propagated once into the
        shared parameters. ``shared_losses``: the losses the method sees (default: ``losses``,
        averaged over processes under torch.distributed).
        """
        from mtlkit.train import distributed as dist

        items = _as_list(losses)
        values = torch.stack([loss.detach().reshape(()) for loss in items])
        seen = dist.all_reduce_mean(values) if shared_losses is None else shared_losses
        if not self.method.needs_gradients:
            total = self.method.combine(dist.globalize(torch.stack([loss.reshape(()) for loss in items])))
            (scaler.scale(total) if scaler is not None else total).backward()
            return values
        shared = [p for p in (shared_params or []) if p.requires_grad]
        if features is not None:
            feats = [features] if isinstance(features, Tensor) else list(features)
            self._gradient_backward(items, seen, shared, feats, task_params, scaler)
        else:
            if shared_params is None:
                raise ValueError(f"{type(self.method).__name__} needs shared_params (or features)")
            self._gradient_backward(items, seen, shared, None, task_params, scaler)
        return values

    def _gradient_backward(self, items: list[Tensor], seen: Tensor, shared: list[Tensor],
                           features: list[Tensor] | None, task_params: Sequence[Tensor] | None,
                           scaler: torch.amp.GradScaler | None) -> None:
        from mtlkit.train import distributed as dist
        from mtlkit.weighting.gradients import per_task_gradients, write_gradients

        # scaler.scale() (not get_scale()) initialises the scaler before the caller's unscale_
        scale = float(scaler.scale(torch.ones((), device=items[0].device))) if scaler is not None else 1.0
        inputs = features if features is not None else shared
        if task_params is None:
            stop = {id(f.grad_fn) for f in features or [] if f.grad_fn is not None}
            found = graph_leaves(items, stop)
            skip = {id(t) for t in (*shared, *(features or []))}
            own = [p for p in found if id(p) not in skip]
        else:
            own = [p for p in task_params if p.requires_grad]
        world = dist.world_size()
        # one loss tensor per task: each backward runs only the part of the graph its task reaches,
        # and the task-specific parameters get sum_k dL_k/dtheta in the same pass
        grads = per_task_gradients([loss * scale for loss in items], inputs, retain_graph=features is not None,
                                   accumulate=own, strategy=self.strategy) / scale
        if own:
            dist.average_grads(own)
        if features is not None:
            # d(mean over ranks of L_k) / d(rank r's features) = grads_r / world: the global matrix
            # is the ranks' blocks side by side (one column block per rank)
            grads = dist.all_gather_cat(grads / world, dim=1)
        else:
            grads = dist.all_reduce_mean(grads)
        update = self.method.aggregate(grads, seen)
        if scale != 1.0:  # gradients the method wrote into its own parameters are unscaled: match the rest
            for p in self.method.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        if features is not None:
            local = update.view(world, -1)[dist.rank()] * world
            chunks, offset = [], 0
            for f in features:
                n = f.numel()
                chunks.append(local[offset:offset + n].view_as(f).to(f.dtype) * scale)
                offset += n
            torch.autograd.backward(features, grad_tensors=chunks)
            dist.average_grads(shared)
        else:
            write_gradients(shared, update * scale)

    #: per-task gradient path ("loop" or "batched"; "auto" picks by timing, not reproducible)
    strategy: str = "loop"


def backward(
    losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor,
    shared_params: Sequence[Tensor] | None = None,
    features: Sequence[Tensor] | Tensor | None = None,
    method: str | Weighting = "equal",
    **kwargs,
) -> Tensor:
    """One balanced backward pass with a fresh method (stateless methods; keep a :class:`Balancer` otherwise)."""
    names = list(losses) if isinstance(losses, Mapping) else len(_as_list(losses))
    options = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("task_params", "scaler", "shared_losses")}
    return Balancer(method, names, **options).backward(losses, shared_params, features, **kwargs)


def _as_list(losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor) -> list[Tensor]:
    if isinstance(losses, Mapping):
        return list(losses.values())
    if isinstance(losses, Tensor):
        return list(losses.reshape(-1).unbind(0))
    return list(losses)


def graph_leaves(outputs: Sequence[Tensor], stop: set[int] = frozenset()) -> list[Tensor]:
    """Leaf tensors requiring grad that ``outputs`` depend on, not looking past nodes whose id is in ``stop``."""
    seen: set[int] = set()
    leaves: list[Tensor] = []
    ids: set[int] = set()
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or id(node) in stop:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if variable is not None and id(variable) not in ids:
            ids.add(id(variable))
            leaves.append(variable)
        stack.extend(fn for fn, _ in node.next_functions)
    return leaves
