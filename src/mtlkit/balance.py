"""A drop-in backward for your own training loop: ``mtlkit.backward(losses, shared_params=...)``.

It fills ``.grad`` the way a weighting method says, then your optimizer steps as usual::

    balancer = mtlkit.Balancer("pcgrad", tasks=["seg", "depth"])
    for batch in loader:
        optimizer.zero_grad()
        out = model(batch["image"])
        losses = [task.loss(out[task.name], batch[task.name]) for task in tasks]
        balancer.backward(losses, shared_params=model.shared_parameters())
        optimizer.step()

Loss-level methods (equal, dwa, uncertainty, ...) back-propagate ``weighting.combine(losses)``.
Gradient-level methods (pcgrad, mgda, cagrad, ...) take the K per-task gradients w.r.t.
``shared_params`` (or w.r.t. ``features``, the shared representation, when given: the MGDA-UB
trick), aggregate them into one update written to the shared parameters' ``.grad``, and give
every other parameter the losses reach (found from the autograd graph, or ``task_params``) the
sum of its tasks' gradients.

``features`` must cut the graph: the losses may depend on the shared parameters only through them,
and no feature may be computed from another (or the gradients w.r.t. both overlap and the update
counts the paths between them twice). Both are checked (a ValueError names the feature). When an
encoder's tensors are computed from each other (MTAN's stages, Dense's pooled maps), pass
``features=FeatureCut(encoded)`` and compute the losses from the cut's detached copies::

    cut = mtlkit.FeatureCut(model.encode(x))
    out = model.decode(cut)
    losses = [task.loss(out[task.name], batch[task.name]) for task in tasks]
    balancer.backward(losses, shared_params=model.shared_parameters(), features=cut)

The per-task gradients are then partial derivatives w.r.t. the copies, and the aggregate is
back-propagated once from the encoder's tensors: with a method that sums the task gradients, the
update is exactly the gradient of the summed losses. With a GradScaler pass ``scaler=`` and call ``scaler.step`` /
``scaler.update`` as usual: per-task gradients are unscaled before the method sees them. Under
DistributedDataParallel run the forward on the wrapped module's ``.module`` (gradient methods
bypass DDP's hooks): ``backward`` averages the per-task gradients and the task-specific
gradients over the processes itself, so every rank applies the same update. The trainer's step
(:mod:`mtlkit.train.step`) runs this same code.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit._deprecation import pop_renamed, renamed
from mtlkit.weighting.base import Weighting

#: the values of ``grad_path`` (the config's ``weighting.grad_path``): how a gradient-level method's
#: per-task gradients are computed. "loop": K backward passes, the K x D matrix; "batched": one vmapped
#: pass, the same matrix; "gramian" (Gramian-only methods, ``Weighting.gramian_only``): the K x K
#: Gramian a block of the inputs at a time (never K x D), then one backward of sum_k w_k L_k.
GRAD_PATHS = ("loop", "batched", "gramian")


class Balancer:
    """A weighting method (by name or instance) and its state across steps; ``backward`` per step.

    ``grad_path``: how per-task gradients are computed, as the config's ``weighting.grad_path``
    (:data:`GRAD_PATHS`; the same update up to float rounding on every path). Fixed for the
    Balancer's life, never chosen by timing; ``"gramian"`` with a gradient-level method that needs
    the task gradients themselves (``gramian_only`` False) is a ConfigError naming the method.
    Loss-level methods ignore it (:attr:`effective_path` is then ``"combine"``). ``gramian_block``: the
    Gramian path's block budget in elements (None: ceil(D / K), about one gradient's memory and K + 1
    passes; larger blocks trade memory for fewer passes, the same result up to rounding).
    """

    def __init__(
        self,
        weighting: str | Weighting = "equal",
        tasks: Sequence[str] | int | None = None,
        *,
        mode: str | None = None,
        grad_path: str = "loop",
        gramian_block: int | None = None,
        **options: Any,
    ) -> None:
        if "method" in options:  # the name before 0.1
            weighting = pop_renamed(options, "method", "weighting", "Balancer")
        if isinstance(tasks, (str, bytes)) or tasks is not None and not isinstance(tasks, (int, Sequence)):
            raise TypeError(
                f"tasks: expected a list of task names or a number of tasks, got {type(tasks).__name__}"
                + (f" {tasks!r} (one task: tasks=[{tasks!r}])" if isinstance(tasks, str) else "")
            )
        if not isinstance(weighting, (str, Weighting)):
            raise TypeError(f"weighting: expected a method name or a Weighting, got {type(weighting).__name__}")
        if isinstance(weighting, Weighting):
            if options:
                raise TypeError("options are for a method given by name")
            self.weighting = weighting
        else:
            from mtlkit.registry import WEIGHTINGS

            if tasks is None:
                raise TypeError("Balancer(name) needs tasks= (task names, or how many tasks)")
            names = [f"task{i}" for i in range(tasks)] if isinstance(tasks, int) else list(tasks)
            self.weighting = WEIGHTINGS.get(weighting)(names, **options)
        self.mode = mode
        self.grad_path = checked_grad_path(grad_path, self.weighting)
        if gramian_block is not None and (
            isinstance(gramian_block, bool) or not isinstance(gramian_block, int) or gramian_block < 1
        ):
            raise ValueError(f"gramian_block: expected a number of elements >= 1 or None, got {gramian_block!r}")
        self.gramian_block = gramian_block

    @property
    def method(self) -> Weighting:
        """Deprecated name of :attr:`weighting`."""
        renamed("Balancer.method", "Balancer.weighting")
        return self.weighting

    @property
    def strategy(self) -> str:
        """Deprecated name of :attr:`grad_path`."""
        renamed("Balancer.strategy", "Balancer.grad_path")
        return self.grad_path

    @strategy.setter
    def strategy(self, value: str) -> None:
        renamed("Balancer.strategy", "Balancer.grad_path")
        self.grad_path = checked_grad_path(value, self.weighting)

    @property
    def effective_path(self) -> str:
        """The path this Balancer's steps take (results.json's ``grad_path``): :attr:`grad_path` for a
        gradient-level method, ``"combine"`` for a loss-level one (one backward of its combined loss)."""
        return self.grad_path if self.weighting.needs_gradients else "combine"

    @property
    def weights(self) -> Tensor:
        """The task weights of the last step (``weighting.last_weights``)."""
        return self.weighting.last_weights

    def backward(
        self,
        losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor,
        shared_params: Sequence[Tensor] | None = None,
        *,
        features: Sequence[Tensor] | Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        shared_losses: Tensor | None = None,
        present: Sequence[str] | None = None,
    ) -> Tensor:
        """Fill ``.grad`` of the shared and task-specific parameters for ``losses``; returns the K losses.

        ``losses``: K scalar losses (a list, a K-vector, or ``{task: loss}`` keyed by the
        Balancer's tasks). ``shared_params``: leaf tensors every task's loss depends on (what
        gradient-level methods balance). ``features`` (keyword-only, as everything after
        ``shared_params``): tensors every task's loss is computed from (computed from the shared
        parameters); given, gradients are taken w.r.t. them and back-propagated once into the
        shared parameters. They must cut the graph, or be a :class:`FeatureCut` (module docstring).
        ``shared_losses``: the losses the method sees (default: ``losses``, averaged over processes
        under torch.distributed).

        ``present``: the tasks ``losses`` are for, when some tasks have no label in this batch (a
        mapping's keys say it by themselves). The others are dropped from the step, not given a zero
        gradient: the method runs on the present tasks alone (:meth:`Weighting.only`), absent tasks
        get weight 0 and their returned loss is 0 (``shared_losses`` is then the present tasks' too).

        Raises TypeError for an argument of the wrong type and ValueError, naming the task, for a
        NaN/inf loss, a loss that does not require grad or does not reach ``shared_params``
        (``features``), a non-leaf shared parameter, or mapping keys that are not the tasks;
        nothing is back-propagated then.
        """
        idx = self._present_indices(losses, present)
        args = (shared_params, features, task_params, scaler, shared_losses)
        if idx is None:
            return self._backward(losses, *args)
        return self._backward_present(losses, idx, args)

    def _present_indices(
        self, losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor, present: Sequence[str] | None
    ) -> list[int] | None:
        """Indices of the tasks ``losses`` are for; None when they are for every task (nothing to drop)."""
        names = self.weighting.task_names
        if present is None and isinstance(losses, Mapping) and set(losses) < set(names) and losses:
            present = [n for n in names if n in losses]
        if present is None:
            return None
        if isinstance(present, (str, bytes)) or any(n not in names for n in present) or not present:
            raise ValueError(f"present: expected a non-empty list of the Balancer's tasks {names}, got {present!r}")
        if isinstance(losses, Mapping) and set(losses) != set(present):
            raise ValueError(f"losses: keys {sorted(map(str, losses))} are not the present tasks {list(present)}")
        count = len(losses) if not isinstance(losses, Tensor) else losses.numel()
        if count != len(present):
            raise ValueError(f"losses: {count} losses for the {len(present)} present tasks {list(present)}")
        idx = sorted(names.index(n) for n in present)
        return None if len(idx) == len(names) else idx

    def _backward_present(
        self, losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor, idx: list[int], args: tuple[Any, ...]
    ) -> Tensor:
        """:meth:`backward` for the tasks ``idx`` only; the K losses back (0 for the absent tasks)."""
        names = self.weighting.task_names
        if isinstance(losses, Mapping):
            items = [losses[names[i]] for i in idx]
        elif isinstance(losses, Tensor):
            items = list(losses.reshape(-1).unbind(0))
        else:
            items = list(losses)
        with self.weighting.only(idx):
            values = self._backward(items, *args)
        out = torch.zeros(len(names), dtype=values.dtype, device=values.device)
        out[idx] = values
        return out

    def _backward(
        self,
        losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor,
        shared_params: Sequence[Tensor] | None,
        features: Sequence[Tensor] | Tensor | None,
        task_params: Sequence[Tensor] | None,
        scaler: torch.amp.GradScaler | None,
        shared_losses: Tensor | None,
    ) -> Tensor:
        """:meth:`backward` for every task of the method (inside :meth:`Weighting.only`: every present one)."""
        from mtlkit.train import distributed as dist

        items = self._checked_losses(losses)
        values = torch.stack([loss.detach().reshape(()) for loss in items])
        combined: Tensor | None = None
        if not self.weighting.needs_gradients:
            # the K-vector the method combines: its value the mean over processes, its gradient this rank's
            vector = losses.reshape(-1) if isinstance(losses, Tensor) else torch.stack([x.reshape(()) for x in items])
            combined = dist.globalize(vector)
            seen = combined.detach() if shared_losses is None else shared_losses
        else:
            seen = dist.all_reduce_mean(values) if shared_losses is None else shared_losses
        _check_finite(seen, self.weighting.task_names)  # the mean over processes: every rank stops together
        shared = _checked_params(shared_params, "shared_params")
        feats = (
            features if features is None or isinstance(features, FeatureCut) else _checked_tensors(features, "features")
        )
        if task_params is not None:
            _checked_params(task_params, "task_params")
        if combined is not None:
            total = self.weighting.combine(combined)
            (scaler.scale(total) if scaler is not None else total).backward()
            return values
        if feats is None and shared_params is None:
            raise ValueError(f"{type(self.weighting).__name__} needs shared_params (or features)")
        shared = [p for p in shared if p.requires_grad]
        # with features, a loss that reaches the shared parameters only around them is _cut_inputs's to name
        _check_reach(
            items,
            shared if feats is None else [*feats, *shared],
            self.weighting.task_names,
            "shared_params" if feats is None else "features or shared_params",
        )
        self._gradient_backward(items, seen, shared, feats, task_params, scaler)
        return values

    def _checked_losses(self, losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor) -> list[Tensor]:
        """The K losses in task order; wrong types, counts or names are errors naming ``losses``."""
        names = self.weighting.task_names
        if isinstance(losses, Mapping):
            unknown = [k for k in losses if k not in names]
            missing = [n for n in names if n not in losses]
            if unknown or missing:
                raise ValueError(
                    f"losses: keys {sorted(map(str, losses))} are not the Balancer's tasks {names}"
                    + (f" (unknown: {unknown})" if unknown else "")
                    + (f" (missing: {missing})" if missing else "")
                )
            items = [losses[n] for n in names]
        elif isinstance(losses, Tensor):
            items = list(losses.reshape(-1).unbind(0))
        elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
            items = list(losses)
        else:
            raise TypeError(
                f"losses: expected a list, a tensor or a mapping of task losses, got {type(losses).__name__}"
            )
        for name, loss in zip(names, items):
            if not isinstance(loss, Tensor):
                raise TypeError(f"losses: the loss of task {name!r} is a {type(loss).__name__}, not a tensor")
            if loss.numel() != 1:
                raise ValueError(f"losses: the loss of task {name!r} has shape {tuple(loss.shape)}, expected a scalar")
            if not loss.requires_grad:
                raise ValueError(
                    f"losses: the loss of task {name!r} does not require grad (computed under "
                    "torch.no_grad(), detached, or from no trainable parameter)"
                )
        if len(items) != len(names):
            raise ValueError(f"losses: {len(items)} losses for the Balancer's {len(names)} tasks {names}")
        return items

    def _gradient_backward(
        self,
        items: list[Tensor],
        seen: Tensor,
        shared: list[Tensor],
        features: list[Tensor] | None,
        task_params: Sequence[Tensor] | None,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        from mtlkit.train import distributed as dist
        from mtlkit.weighting.gradients import per_task_gradients, write_gradients

        # scaler.scale() (not get_scale()) initialises the scaler before the caller's unscale_
        scale = float(scaler.scale(torch.ones((), device=items[0].device))) if scaler is not None else 1.0
        if features is not None:
            # the cut's leaves (or the user's features, once checked to be a cut) that carry gradient
            inputs, sources = _cut_inputs(features)
        else:
            inputs, sources = shared, []
        own = _task_parameters(items, shared, features, task_params)
        world = dist.world_size()
        if self.grad_path == "gramian":
            _gramian_backward(
                self.weighting, items, seen, shared, features, inputs, sources, own, scale, self.gramian_block
            )
            return
        # one loss tensor per task: each backward runs only the part of the graph its task reaches,
        # and the task-specific parameters get sum_k dL_k/dtheta in the same pass. With a FeatureCut
        # that part is the decoder alone (the shared graph hangs off the sources), so it need not be kept.
        keep = features is not None and not isinstance(features, FeatureCut)
        grads = (
            per_task_gradients(
                [loss * scale for loss in items], inputs, retain_graph=keep, accumulate=own, strategy=self.grad_path
            )
            / scale
        )
        if own:
            dist.average_grads(own)
        if features is not None:
            # d(mean over ranks of L_k) / d(rank r's features) = grads_r / world: the global matrix
            # is the ranks' blocks side by side (one column block per rank)
            grads = dist.all_gather_cat(grads / world, dim=1)
        else:
            grads = dist.all_reduce_mean(grads)
        update = self.weighting.aggregate(grads, seen)
        if scale != 1.0:  # gradients the method wrote into its own parameters are unscaled: match the rest
            for p in self.weighting.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        if features is not None:
            local = update.view(world, -1)[dist.rank()] * world
            chunks, offset = [], 0
            for f in sources:
                n = f.numel()
                chunks.append(local[offset : offset + n].view_as(f).to(f.dtype) * scale)
                offset += n
            # one backward through the shared part: sum_i J_i^T chunk_i, each path from the shared
            # parameters to a loss crossing exactly one feature (the cut), so counted once
            if sources:
                torch.autograd.backward(sources, grad_tensors=chunks)
            dist.average_grads(shared)
        else:
            write_gradients(shared, update * scale)


def checked_grad_path(grad_path: str, weighting: Weighting) -> str:
    """``grad_path`` when it is one of :data:`GRAD_PATHS` and ``weighting`` can take it; else a ConfigError."""
    from mtlkit.errors import ConfigError

    if grad_path not in GRAD_PATHS:
        raise ConfigError(f"weighting.grad_path must be one of {', '.join(GRAD_PATHS)}, got {grad_path!r}")
    if grad_path == "gramian" and weighting.needs_gradients and not weighting.gramian_only:
        raise ConfigError(
            f"weighting.grad_path: gramian needs a method whose weights depend on the task gradients only "
            f"through their Gramian; {type(weighting).__name__} needs the K x D gradients (use loop or batched)"
        )
    return grad_path


def _gramian_backward(
    weighting: Weighting,
    items: list[Tensor],
    seen: Tensor,
    shared: list[Tensor],
    features: list[Tensor] | None,
    inputs: list[Tensor],
    sources: list[Tensor],
    own: list[Tensor],
    scale: float,
    block: int | None = None,
) -> None:
    """The Gramian path: the K x K Gramian w.r.t. ``inputs`` a block at a time, the method's weights, then
    one backward of ``sum_k w_k L_k`` (times the scaler's ``scale``) into the shared part.

    The same update as the K x D path (``aggregate`` is ``sum_k w_k g_k`` with w from the same
    Gramian), task-specific parameters get ``sum_k dL_k/dtheta`` (in the Gramian's first pass), and
    the K x D matrix is never held: the largest gradient block is K x ceil(D / K). Under DDP each
    block's rows are averaged over the processes (parameter mode: the Gramian of the mean gradients)
    or the local Gramians summed (representation mode: the global matrix is the ranks' column blocks
    side by side, each divided by the world size), so every rank gets the same weights.
    """
    from mtlkit.train import distributed as dist
    from mtlkit.weighting.gradients import gramian_blockwise

    world = dist.world_size()
    represent = features is not None
    reduce = dist.all_reduce_mean if not represent and world > 1 else None
    # the first backward through a FeatureCut's decoder may free it only if nothing else needs it: the
    # weighted backward below runs through the same graph again, so it is always retained here
    scaled = [loss * scale for loss in items]
    gram = gramian_blockwise(scaled, inputs, block, retain_graph=True, accumulate=own, reduce=reduce, scale=scale)
    if own:
        dist.average_grads(own)
    if represent and world > 1:
        gram = dist.all_reduce_sum(gram.to(items[0].device)).cpu() / world**2
    weights = weighting.weights_from_gramian(gram, seen)
    total = sum((w * loss for w, loss in zip(weights.tolist(), scaled)), torch.zeros((), device=items[0].device))
    if not represent:
        # sum_k w_k dL_k/dtheta into the shared parameters only (the heads already have theirs)
        torch.autograd.backward(total, inputs=shared)
        for p in shared:  # as write_gradients on the K x D path: a parameter no loss reaches gets zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if world > 1:
            dist.average_grads(shared)
        return
    # the user's own cut features are inputs and sources at once: keep the graph above them for the next pass
    grads = torch.autograd.grad(total, inputs, retain_graph=not isinstance(features, FeatureCut), allow_unused=True)
    chunks = [torch.zeros_like(f) if g is None else g for g, f in zip(grads, inputs)]
    # one backward through the shared part, as the K x D path (the cut: each path crosses one feature)
    torch.autograd.backward(sources, grad_tensors=[c.to(f.dtype) for c, f in zip(chunks, sources)])
    dist.average_grads(shared)


def backward(
    losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor,
    shared_params: Sequence[Tensor] | None = None,
    *,
    weighting: str | Weighting = "equal",
    features: Sequence[Tensor] | Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """One balanced backward pass with a fresh method (stateless methods; keep a :class:`Balancer` otherwise).

    Everything after ``shared_params`` is keyword-only (``weighting="pcgrad"``): a method name in a
    tensor's place would otherwise be taken for ``features``. Other keywords: ``task_params``,
    ``scaler``, ``shared_losses`` (as :meth:`Balancer.backward`), ``grad_path`` and the method's
    options (as :class:`Balancer`). Errors as :meth:`Balancer.backward`.
    """
    if "method" in kwargs:  # the name before 0.1
        weighting = pop_renamed(kwargs, "method", "weighting", "mtlkit.backward")
    if isinstance(losses, Mapping):
        names: list[str] | int = [str(k) for k in losses]
    elif isinstance(losses, Tensor):
        names = losses.numel()
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        names = len(losses)
    else:
        raise TypeError(f"losses: expected a list, a tensor or a mapping of task losses, got {type(losses).__name__}")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("task_params", "scaler", "shared_losses")}
    return Balancer(weighting, names, **options).backward(losses, shared_params, features=features, **kwargs)


def _checked_tensors(values: Sequence[Tensor] | Tensor, what: str) -> list[Tensor]:
    """``values`` as a list of tensors; anything else (a method name, a module) is a TypeError naming ``what``."""
    if isinstance(values, Tensor):
        return [values]
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(
            f"{what}: expected tensors, got {type(values).__name__}"
            + (f" {values!r} (method names go in weighting=...)" if isinstance(values, str) else "")
        )
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, Tensor):
            raise TypeError(f"{what}[{i}]: expected a tensor, got {type(v).__name__}")
    return out


def _checked_params(params: Sequence[Tensor] | None, what: str) -> list[Tensor]:
    """Parameters as a list of leaf tensors (a generator such as ``model.parameters()`` is read once)."""
    if params is None:
        return []
    if isinstance(params, torch.nn.Module):
        raise TypeError(
            f"{what}: expected parameters, got the module {type(params).__name__} (pass module.parameters())"
        )
    out = _checked_tensors(params, what)
    for i, p in enumerate(out):
        if not p.is_leaf:
            raise ValueError(
                f"{what}[{i}] is not a leaf tensor (it was computed from other tensors, so its "
                ".grad would not reach the parameters): pass the parameters themselves"
            )
    return out


class NonFiniteLossError(ValueError):
    """A NaN/inf loss: ``bad`` names each such task with its value (``"depth=nan"``); nothing was back-propagated."""

    def __init__(self, bad: list[str]) -> None:
        super().__init__(f"losses: non-finite loss for task(s) {', '.join(bad)}; nothing was back-propagated")
        self.bad = bad


def _check_finite(values: Tensor, names: Sequence[str]) -> None:
    """A NaN/inf loss is a :class:`NonFiniteLossError` naming its task (nothing is back-propagated)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise NonFiniteLossError([f"{n}={v:g}" for n, v, b in zip(names, values.tolist(), bad.tolist()) if b])


def _check_reach(items: Sequence[Tensor], inputs: Sequence[Tensor], names: Sequence[str], what: str) -> None:
    """Every loss depends on at least one of ``inputs`` (else the method would silently get a zero gradient)."""
    if not inputs:
        raise ValueError(f"{what}: empty (no tensor requiring grad), so the method has nothing to balance")
    targets = {id(t) for t in inputs}
    graph_targets = {id(t.grad_fn) for t in inputs if t.grad_fn is not None}
    for name, loss in zip(names, items):
        if not _reaches(loss, targets, graph_targets):
            raise ValueError(f"losses: the loss of task {name!r} does not depend on {what}")


def _reaches(output: Tensor, leaves: set[int], nodes: set[int]) -> bool:
    """Whether ``output``'s autograd graph reaches a leaf whose id is in ``leaves`` or a node in ``nodes``."""
    if id(output) in leaves:
        return True
    seen: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        if id(node) in nodes or id(getattr(node, "variable", None)) in leaves:
            return True
        seen.add(id(node))
        stack.extend(fn for fn, _ in node.next_functions)
    return False


class FeatureCut(list):
    """Detached leaf copies of shared features (the list itself) and the features they copy (``sources``).

    Representation mode needs per-task gradients w.r.t. a set of tensors that cuts the graph: every
    path from the shared parameters to a loss crosses exactly one of them. The tensors a network's
    encoder returns often do not: MTAN's stages are computed from each other, so the gradient of a
    loss w.r.t. stage j would include the paths through stages j+1.., and back-propagating every
    stage's gradient would count those paths again. Copies are independent inputs, so whatever the
    sources' relations, the gradients w.r.t. the copies are partial derivatives and
    ``sum_i J_i^T dL/dcopy_i = dL/dtheta`` (``J_i`` the Jacobian of source i w.r.t. the shared
    parameters), provided the task-specific part reads the copies only::

        cut = mtlkit.FeatureCut(model.encode(x))
        out = model.decode(cut)                   # task-specific part, from the copies
        balancer.backward(losses, shared_params=model.shared_parameters(), features=cut)

    ``backward`` differentiates each task's loss w.r.t. the copies (through the task-specific part
    only), aggregates, and back-propagates the update once from ``sources`` into the shared part.
    A copy is a view of its source's data: an in-place change of a copy is an autograd error.
    """

    def __init__(self, features: Sequence[Tensor] | Tensor) -> None:
        sources = _checked_tensors(features, "FeatureCut(features)")
        super().__init__(f.detach().requires_grad_(f.requires_grad) for f in sources)
        self.sources = sources


def _cut_inputs(features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(tensors the per-task gradients are taken w.r.t., tensors the update is back-propagated from).

    A :class:`FeatureCut` gives its copies and their sources; other features must be a cut
    themselves (:func:`check_cut`) and serve as both. Tensors without gradient are left out.
    """
    if isinstance(features, FeatureCut):
        pairs = [(copy, src) for copy, src in zip(features, features.sources) if copy.requires_grad]
        return [c for c, _ in pairs], [s for _, s in pairs]
    check_cut(features)
    live = [f for f in features if f.requires_grad]
    return live, live


def _task_parameters(
    items: list[Tensor], shared: list[Tensor], features: list[Tensor] | None, task_params: Sequence[Tensor] | None
) -> list[Tensor]:
    """The non-shared parameters the losses reach (``task_params`` when given), found from the graph.

    With ``features``, also a ValueError when a loss reaches a shared parameter other than through
    them: that parameter's gradient would be lost, and the features would not cut the graph.
    """
    feats = list(features or [])
    if task_params is not None and features is None:
        return [p for p in task_params if p.requires_grad]
    found = graph_leaves(items, feature_edges(feats))
    own_ids = {id(f) for f in feats}
    shared_ids = {id(p) for p in shared}
    bypass = [p for p in found if id(p) in shared_ids and id(p) not in own_ids]
    if features is not None and bypass:
        shapes = ", ".join(str(tuple(p.shape)) for p in bypass[:3])
        raise ValueError(
            f"features: the losses reach {len(bypass)} shared parameter(s) (shapes {shapes}"
            f"{', ...' if len(bypass) > 3 else ''}) other than through the features; features must cut "
            "the graph (the losses may depend on the shared parameters only through them)"
        )
    if task_params is not None:
        return [p for p in task_params if p.requires_grad]
    return [p for p in found if id(p) not in shared_ids and id(p) not in own_ids]


def feature_edges(features: Sequence[Tensor]) -> dict[tuple[int, int], object]:
    """The autograd edges ``(id(node), output number)`` that produce the non-leaf ``features``.

    Each maps to its node: holding the node keeps its id from being reused while the edges are in use.
    """
    return {(id(f.grad_fn), f.output_nr): f.grad_fn for f in features if f.grad_fn is not None}


def check_cut(features: Sequence[Tensor]) -> None:
    """A ValueError when a feature is computed from another one (or given twice).

    Gradients w.r.t. both would then be total derivatives that overlap (the one upstream includes
    the paths through the other), and back-propagating both counts those paths twice. Walks the
    graph above the features once; :class:`FeatureCut` is the remedy.
    """
    where: dict[tuple[int, int] | int, int] = {}
    nodes = [f.grad_fn for f in features]  # held, so their ids stay theirs during the walk
    for i, (f, node) in enumerate(zip(features, nodes)):
        key = (id(node), f.output_nr) if node is not None else id(f)
        if key in where:
            raise ValueError(f"features[{i}] is features[{where[key]}] again: each feature must be given once")
        where[key] = i
    hint = (
        "gradients w.r.t. both count the paths between them twice; pass mtlkit.FeatureCut(features) "
        "and compute the losses from its detached copies"
    )
    seen: dict[int, object] = {}  # holds the nodes, so their ids stay theirs during the walk
    for i, start in enumerate(nodes):
        stack = [start] if start is not None else []
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen[id(node)] = node
            for fn, nr in node.next_functions:
                if fn is None:
                    continue
                variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold their leaf
                j = where.get(id(variable)) if variable is not None else where.get((id(fn), nr))
                if j is not None:
                    raise ValueError(f"features[{i}] is computed from features[{j}]: {hint}")
                stack.append(fn)


def graph_leaves(outputs: Sequence[Tensor], stop: Collection[tuple[int, int]] = frozenset()) -> list[Tensor]:
    """Leaf tensors requiring grad that ``outputs`` depend on, not looking past the edges in ``stop``.

    An edge is ``(id(node), output number)``, as :func:`feature_edges` gives for the tensors a
    node produced (a node with several outputs is passed only through the outputs not in ``stop``).
    """
    seen: dict[int, object] = {}  # holds the nodes, so their ids stay theirs during the walk
    leaves: list[Tensor] = []
    ids: set[int] = set()
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None and (id(o.grad_fn), o.output_nr) not in stop]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in ids:
            ids.add(id(variable))
            leaves.append(variable)
        stack.extend(fn for fn, nr in node.next_functions if fn is not None and (id(fn), nr) not in stop)
    return leaves
