"""The one small interface between the training step and any task-weighting method.

Two kinds of method, chosen by ``needs_gradients``:

* loss-level (``needs_gradients = False``): ``combine(losses)`` gets the K task losses of a batch
  (a tensor with graph) and returns the scalar to back-propagate. DWA, uncertainty, RLW, FAMO...
* gradient-level (``needs_gradients = True``): ``aggregate(grads, losses)`` gets the K x D matrix
  of per-task gradients (w.r.t. the shared parameters or the shared representation, as the config
  says) and returns the D-vector to use as the shared update. Task-specific parameters always get
  the gradient of their own task's loss. PCGrad, MGDA, CAGrad, Nash-MTL...

Both record the task weights they used in ``last_weights`` (logged every epoch) and get the
epoch's mean training losses in ``epoch_end``.

Absent tasks (partially labelled data: a task with no labelled sample in the batch): the step runs
the method inside ``with weighting.only(present):`` (``present`` the indices of the tasks that
have a loss, in task order). Inside, ``task_names`` and ``num_tasks`` are those of the present
tasks, the losses (and gradient rows) are theirs only, and the method runs as it would on those tasks alone;
``select(t)`` gives a per-task state tensor's present entries (uncertainty's log-variances, DWA's
weights), so absent tasks' learned state gets no gradient, ``put(t, v)`` writes them back (the
absent tasks' entries are left as they are) and ``expand(v)`` gives K entries, 0 for the absent
tasks (a gradient of learned per-task weights). On leaving, ``last_weights`` is put back to K
entries, 0 for the absent tasks. Every built-in method restricts its state that way (each says how
in its docstring); a method whose state cannot be declares ``handles_absent_tasks = False`` and
``only`` refuses a strict subset with a ValueError.

State for resume: learned weights are parameters or persistent buffers (in ``state_dict``);
histories and counters go through torch's ``get_extra_state``/``set_extra_state`` as plain Python
lists/numbers (checkpoints load with ``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

#: Property names a method may declare, and what the harness checks for each.
PROPERTIES: dict[str, str] = {
    "positive_weights": "loss level: finite, positive weights for present tasks on any loss sequence",
    "loss_scale_invariant": "multiplying one task's loss (and its gradient) by c > 0 changes the update "
    "only by a positive factor",
    "loss_scale_invariant_at_equilibrium": "as above once the method's learned scales have converged "
    "on constant losses",
    "permutation_equivariant": "permuting the tasks permutes the weights and leaves the update unchanged",
    "non_conflicting": "the update has a non-negative inner product with every task gradient",
    "non_conflicting_full_rank": "as above whenever the task gradients are linearly independent",
    "mean_when_equal": "K equal task gradients g give the update g",
    "sum_when_equal": "K equal task gradients g give the update K g (the equal-weighting sum)",
    "pareto_stationary": "the update is 0 when a convex combination of the task gradients is 0",
    "linear_under_scaling": "c -> update(diag(c) G) is linear for c >= 0",
}


class Weighting(nn.Module):
    """Base class of every weighting method (an nn.Module so learned weights are parameters)."""

    needs_gradients: bool = False
    #: The method's name in reports and figure legends (its paper's spelling); empty: the class name
    #: (``mtlkit.report.table.method_label`` reads it, the one place a method name is displayed).
    display_name: str = ""
    #: The guarantees the method declares, checked by the property harness
    #: (tests/weighting/test_weighting_properties.py); names in ``PROPERTIES``. Every method must declare some.
    properties: frozenset[str] = frozenset()
    #: The fewest tasks the method accepts with its default options (robust aggregators need 3).
    min_tasks: int = 1
    #: False for methods that need gradients w.r.t. parameters (e.g. GradNorm's last shared layer).
    supports_representation: bool = True
    #: False for a method whose state is tied to one process; multi-process training refuses it
    #: (``mtlkit.train.distributed.check_weighting``) with ``distributed_note`` as the reason.
    supports_distributed: ClassVar[bool] = True
    distributed_note: ClassVar[str] = "it keeps state that cannot be shared across processes"
    #: True for a bilevel method that needs a meta step before each training step (Auto-Lambda):
    #: the trainer holds out a meta split of the training set for it (``meta_split``) and runs the
    #: split's ``step`` before each batch. Such a method has ``meta_fraction``, ``lam``, ``meta_steps``
    #: and ``apply_meta_gradient`` (:class:`mtlkit.weighting.AutoLambda` is the one built in).
    needs_meta_step: ClassVar[bool] = False
    #: True for a method whose update is ``sum_k w_k g_k`` with weights that depend on the task
    #: gradients only through the K x K Gramian ``G G^T``: it implements
    #: ``weights_from_gramian(gramian, losses)``, and ``grad_path: gramian`` may compute only the
    #: Gramian (never the K x D matrix) and back-propagate ``sum_k w_k L_k`` once. Methods that need G
    #: itself (projections, sign masks, robust row picks) keep it False; the Gramian path refuses them.
    gramian_only: bool = False
    #: False for a method whose per-task state (histories, learned per-task scales updated in place)
    #: has no honest restriction to a subset of the tasks: :meth:`only` refuses a step without every task.
    #: Not a ClassVar: a method over another (Auto-Lambda's ``base``) takes its base's value per instance.
    handles_absent_tasks: bool = True
    absent_note: str = "it updates per-task state of every task at every step"
    #: the K task weights of the last step (a non-persistent buffer)
    last_weights: Tensor

    def __init__(self, task_names: list[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.num_tasks = len(task_names)
        self.register_buffer("last_weights", torch.ones(self.num_tasks), persistent=False)
        #: every task's index, also inside :meth:`only` (where ``num_tasks`` counts the present ones)
        self.all_tasks = self.num_tasks
        #: indices of the tasks of the current step inside :meth:`only`; None = every task
        self.present: list[int] | None = None

    @contextmanager
    def only(self, present: Sequence[int]) -> Iterator[None]:
        """Run the method on the tasks ``present`` (indices, ascending) alone, as if they were all its tasks.

        Inside the block ``task_names``/``num_tasks`` are the present tasks' and :meth:`select`
        restricts per-task state; afterwards ``last_weights`` has K entries again, 0 for every absent
        task (it had no loss, so it has no weight). Every task present: the block changes nothing.
        """
        idx = [int(i) for i in present]
        if idx != sorted(set(idx)) or not idx or idx[0] < 0 or idx[-1] >= self.num_tasks:
            raise ValueError(f"present: expected ascending distinct task indices in [0, {self.num_tasks}), got {idx}")
        if len(idx) == self.num_tasks:
            yield
            return
        if self.present is not None:
            raise RuntimeError("Weighting.only: already restricted")
        if not self.handles_absent_tasks:
            raise ValueError(
                f"{type(self).__name__} cannot drop a task from a step ({self.absent_note}); "
                "every batch must carry every task's labels, or use a method such as equal, dwa, uncertainty, "
                "pcgrad, mgda"
            )
        names, k = self.task_names, self.num_tasks
        self.task_names, self.num_tasks, self.present = [names[i] for i in idx], len(idx), idx
        try:
            yield
        finally:
            self.task_names, self.num_tasks, self.present = names, k, None
            sub = self.last_weights.detach().reshape(-1)
            full = torch.zeros(k, dtype=sub.dtype, device=sub.device)
            if sub.numel() == len(idx):
                full[idx] = sub
            self.last_weights = full

    def present_index(self) -> list[int]:
        """The indices, among all the method's tasks, of the tasks of the step (all of them outside :meth:`only`)."""
        return list(range(self.all_tasks)) if self.present is None else list(self.present)

    def select(self, state: Tensor) -> Tensor:
        """A per-task state tensor's entries (first dimension) of the tasks of the step (all outside :meth:`only`)."""
        if self.present is None:
            return state
        return state[torch.tensor(self.present, device=state.device)]

    def expand(self, values: Tensor) -> Tensor:
        """All tasks' entries (first dimension) from the step's tasks' ``values``: 0 for the absent tasks
        (``values`` itself outside :meth:`only`); e.g. the gradient of learned per-task weights."""
        if self.present is None:
            return values
        full = values.new_zeros((self.all_tasks, *values.shape[1:]))
        full[torch.tensor(self.present, device=full.device)] = values
        return full

    def put(self, state: Tensor, values: Tensor) -> None:
        """Write ``values`` into the step's tasks' entries (first dimension) of ``state``, in place.

        The inverse of :meth:`select`: outside :meth:`only` the whole tensor is overwritten; inside, the
        absent tasks' entries are left as they are.
        """
        values = values.to(device=state.device, dtype=state.dtype)
        if self.present is None:
            state.copy_(values)
        else:
            state[torch.tensor(self.present, device=state.device)] = values

    def combine(self, losses: Tensor) -> Tensor:
        """Loss-level: the scalar to back-propagate. Default: the plain sum."""
        self.last_weights = torch.ones_like(losses.detach())
        return losses.sum()

    def aggregate(self, grads: Tensor, losses: Tensor) -> Tensor:
        """Gradient-level: combine the K x D task gradients into one D-vector."""
        raise NotImplementedError

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Gramian-only methods (``gramian_only``): the K task weights (float64, CPU) from the K x K
        float64 Gramian of the task gradients and the K detached losses; also sets ``last_weights``."""
        raise NotImplementedError(f"{type(self).__name__} needs the task gradients themselves, not only their Gramian")

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Called after each training epoch with the K mean task losses (DWA uses them)."""

    def weights_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.task_names, self.last_weights.tolist())}
