"""Per-task gradients for gradient-level methods: the K x D Jacobian of the task losses.

``per_task_gradients(losses, inputs)`` returns the matrix whose row k is the flattened gradient of
``losses[k]`` w.r.t. ``inputs`` (the shared parameters, or the shared representation tensors).

Two ways to compute it:

* batched: one vmapped backward pass, ``torch.autograd.grad(losses, inputs, grad_outputs=I_K,
  is_grads_batched=True)``: every node of the graph runs once on K stacked cotangents.
* loop: K ``autograd.grad(losses[k], retain_graph=True)`` calls. Each call only runs the nodes
  that loss k reaches, so when ``losses`` is given as a *list of the K separate loss tensors*
  (not a stacked vector, whose backward sends zero cotangents into every task's branch), the
  task-specific parts run once in total and only the shared part runs K times.

Strategy "loop" is the default: a fixed path, so results never depend on timing, and the one the
trainer takes unless ``weighting.grad_path: batched`` says otherwise (both give the exact K x D
matrix, equal up to float rounding). "batched" raises if an operator has no batching rule.

Strategy "auto" (explicit opt-in only, never a default): the first call for a graph signature
tries the batched pass (some operators have no batching rule, e.g. a custom autograd function
calling ``.item()``: then the loop is used from then on, with one warning). The next four calls
time loop and batched alternately, and the faster (by its best time) is kept for that signature,
so which path a run takes depends on the machine's timing. A signature is the shapes/dtypes of
``inputs`` and ``accumulate`` and the form of ``losses`` (one per model type and mode), or an
explicit ``key``. ``gradient_path(key)`` says which path it took. On CPU the loop usually wins
(vmapped work is K times the work on the task branches); on a GPU batching amortises kernel launches.

``accumulate``: tensors (the task-specific parameters) that also get sum_k dL_k/dt added to their
``.grad`` in the same pass, so the training step needs no extra backward for them.

Gramian-only methods need not see the matrix: :func:`gramian_blockwise` accumulates the K x K
Gramian a block of the inputs at a time (one vmapped pass per block, never K x D), after which one
backward of sum_k w_k L_k writes the update (the trainer's ``weighting.grad_path: gramian``,
:func:`mtlkit.balance.Balancer`).

Memory: the result is K x D floats (D = total size of ``inputs``). The loop path peaks at about
(K + 1) D floats plus one backward's activation gradients. The batched path holds the per-input
gradients next to the flat matrix for a moment and K copies of each intermediate gradient: about
2 K D floats plus K times one backward's activation gradients (and K x the ``accumulate`` size);
``chunk_size=c`` runs it over c rows at a time: (K + c) D floats plus c times the activations.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtlkit.weighting._common import exact_gramian

STRATEGIES = ("auto", "batched", "loop")
#: the strategy used when a call does not name one: the fixed K-backward path ("auto" is opt-in only).
DEFAULT_STRATEGY = "loop"
_TRIALS = 2  # timed calls of each path before "auto" decides


@dataclass
class _PathState:
    """What "auto" knows about one graph signature."""

    last: str | None = None
    decided: str | None = None
    batched_ok: bool = False
    failure: str | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: {"batched": [], "loop": []})


_STATES: dict[Hashable, _PathState] = {}


def graph_key(inputs: Sequence[Tensor], accumulate: Sequence[Tensor] = (), separate: bool = False) -> tuple:
    """The default signature of a call: shapes, dtypes and devices of the tensors, form of the losses."""

    def sig(ts: Sequence[Tensor]) -> tuple:
        """(shape, dtype, device type) of each tensor."""
        return tuple((tuple(t.shape), t.dtype, t.device.type) for t in ts)

    return (sig(inputs), sig(accumulate), separate)


def gradient_path(key: Hashable) -> str | None:
    """``"batched"`` or ``"loop"``: the path the last call with this key took (None if never)."""
    state = _STATES.get(key)
    return state.last if state else None


def decided_path(key: Hashable) -> str | None:
    """The path "auto" settled on for ``key`` (None while still trying)."""
    state = _STATES.get(key)
    return state.decided if state else None


def batching_failure(key: Hashable) -> str | None:
    """Why the batched backward failed for ``key`` (None if it worked or was never tried)."""
    state = _STATES.get(key)
    return state.failure if state else None


def recorded_paths() -> dict[Hashable, str]:
    """Every key's last path ("batched"/"loop"): what a benchmark reports."""
    return {k: s.last for k, s in _STATES.items() if s.last is not None}


def forget_gradient_paths() -> None:
    """Clear what "auto" learnt (tests; benchmarks; after changing a model's code)."""
    _STATES.clear()


def per_task_gradients(
    losses: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    retain_graph: bool = False,
    *,
    accumulate: Sequence[Tensor] = (),
    key: Hashable | None = None,
    chunk_size: int | None = None,
    strategy: str | None = None,
) -> Tensor:
    """The K x D matrix of flattened gradients of each of the K ``losses`` w.r.t. ``inputs``.

    ``losses``: a K-vector, or (faster in the loop path) a sequence of the K scalar loss tensors.
    ``accumulate``: tensors whose ``.grad`` also receives sum_k dL_k/dt. ``strategy``: "loop"
    (K backward passes; the default, ``DEFAULT_STRATEGY``, also for None), "batched" (one vmapped
    pass, no fallback: errors propagate) or "auto" (timing decides per signature; opt-in, see the
    module docstring). Inputs a loss does not reach get zero gradients.
    """
    strategy = DEFAULT_STRATEGY if strategy is None else strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    inputs, accumulate = list(inputs), list(accumulate)
    vector: Tensor | None
    if isinstance(losses, Tensor):
        separate, vector = False, losses.reshape(-1)
        items = list(losses.reshape(-1).unbind(0))
    else:
        separate, vector = True, None
        items = [loss.reshape(()) for loss in losses]
    k = len(items)
    key = graph_key(inputs, accumulate, separate) if key is None else key
    state = _STATES.setdefault(key, _PathState())
    if k == 0 or not any(t.requires_grad for t in items):
        return _zeros(k, inputs)
    path = _choose(state, strategy)
    keep = retain_graph or (strategy == "auto" and not state.batched_ok)
    if path == "batched":
        timer = _Timer(inputs, enabled=strategy == "auto" and state.decided is None and state.batched_ok)
        try:
            with timer:
                out = _batched(items, vector, inputs, accumulate, keep, chunk_size)
        except RuntimeError as err:
            if strategy == "batched":
                raise
            state.failure = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            state.decided = "loop"
            warnings.warn(
                f"per-task gradients: batched backward failed ({state.failure}); using {k} backward "
                "passes for this model from now on",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            _record(state, "batched", timer)
            state.batched_ok = True
            return out
    timer = _Timer(inputs, enabled=strategy == "auto" and state.decided is None)
    with timer:
        out = _looped(items, inputs, accumulate, retain_graph)
    _record(state, "loop", timer)
    return out


def _choose(state: _PathState, strategy: str) -> str:
    """The path of this call: forced, decided, or the next trial of "auto"."""
    if strategy != "auto":
        return strategy
    if state.decided is not None:
        return state.decided
    if not state.batched_ok:
        return "batched"
    n_loop, n_batched = len(state.times["loop"]), len(state.times["batched"])
    return "loop" if n_loop <= n_batched else "batched"


def _record(state: _PathState, path: str, timer: _Timer) -> None:
    """Remember the path taken and, during trials, its time; decide once both have enough."""
    state.last = path
    if timer.enabled and state.decided is None:
        state.times[path].append(timer.elapsed)
        if all(len(v) >= _TRIALS for v in state.times.values()):
            state.decided = min(state.times, key=lambda p: min(state.times[p]))


class _Timer:
    """Wall time of a block, synchronising CUDA around it (only when enabled)."""

    def __init__(self, tensors: Sequence[Tensor], enabled: bool) -> None:
        self.enabled = enabled
        self.cuda = [t.device for t in tensors[:1] if t.device.type == "cuda"]
        self.elapsed = 0.0

    def __enter__(self) -> _Timer:
        if self.enabled:
            for d in self.cuda:
                torch.cuda.synchronize(d)
            self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and exc[0] is None:
            for d in self.cuda:
                torch.cuda.synchronize(d)
            self.elapsed = time.perf_counter() - self.start


def _zeros(k: int, inputs: Sequence[Tensor]) -> Tensor:
    """A K x D zero matrix (losses that reach no input)."""
    d = sum(t.numel() for t in inputs)
    device = inputs[0].device if inputs else None
    return torch.zeros(k, d, dtype=_grad_dtype(inputs), device=device)


def _grad_dtype(inputs: Sequence[Tensor]) -> torch.dtype:
    """The dtype of the flat matrix: the widest floating dtype among ``inputs``."""
    dtypes = [t.dtype for t in inputs if t.is_floating_point()]
    if not dtypes:
        return torch.get_default_dtype()
    out = dtypes[0]
    for dt in dtypes[1:]:
        out = torch.promote_types(out, dt)
    return out


def _empty(k: int, inputs: Sequence[Tensor]) -> Tensor:
    """An uninitialised K x D matrix for the flattened gradients of ``inputs``."""
    return torch.empty(k, sum(t.numel() for t in inputs), dtype=_grad_dtype(inputs), device=inputs[0].device)


def _fill_rows(out: Tensor, rows: slice | int, grads: Sequence[Tensor | None], inputs: Sequence[Tensor]) -> None:
    """Copy per-input gradients (each ``(k, *shape)`` or ``shape``, or None) into ``out[rows]``."""
    target = out[rows]
    k = target.shape[0] if target.dim() == 2 else 1
    target = target.reshape(k, -1)
    offset = 0
    for g, t in zip(grads, inputs):
        n = t.numel()
        if g is None:
            target[:, offset : offset + n].zero_()
        else:
            target[:, offset : offset + n].copy_(g.reshape(k, n))
        offset += n


def _add_grad(t: Tensor, g: Tensor) -> None:
    """t.grad += g (setting it when None)."""
    g = g.to(t.dtype)
    if t.grad is None:
        t.grad = g
    else:
        t.grad.add_(g)


def _batched(
    items: list[Tensor],
    vector: Tensor | None,
    inputs: list[Tensor],
    accumulate: list[Tensor],
    retain_graph: bool,
    chunk_size: int | None,
) -> Tensor:
    """All rows by vmapped backward passes over (chunks of) the identity's rows."""
    k = len(items)
    ref = vector if vector is not None else items[0]
    eye = torch.eye(k, dtype=ref.dtype, device=ref.device)
    step = k if not chunk_size or chunk_size >= k else max(1, int(chunk_size))
    out = _empty(k, inputs) if inputs else torch.zeros(k, 0)
    wanted = inputs + accumulate
    for start in range(0, k, step):
        rows = eye[start : start + step]
        last = start + step >= k
        if vector is not None:
            outputs, cotangents = [vector], [rows]
        else:
            outputs, cotangents = items, [rows[:, j] for j in range(k)]
        pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            wanted,
            grad_outputs=[c for _, c in pairs],
            is_grads_batched=True,
            retain_graph=retain_graph or not last,
            allow_unused=True,
        )
        if inputs:
            _fill_rows(out, slice(start, start + rows.shape[0]), grads[: len(inputs)], inputs)
        for t, g in zip(accumulate, grads[len(inputs) :]):
            if g is not None:
                _add_grad(t, g.sum(0))
        del grads
    return out


def _looped(items: list[Tensor], inputs: list[Tensor], accumulate: list[Tensor], retain_graph: bool) -> Tensor:
    """Row by row: one backward per loss through the (retained) graph."""
    k = len(items)
    out = _empty(k, inputs) if inputs else torch.zeros(k, 0)
    wanted = inputs + accumulate
    live = [i for i in range(k) if items[i].requires_grad]
    for i in range(k):
        if i not in live:
            out[i].zero_()
            continue
        grads = torch.autograd.grad(items[i], wanted, retain_graph=retain_graph or i != live[-1], allow_unused=True)
        if inputs:
            _fill_rows(out, i, grads[: len(inputs)], inputs)
        for t, g in zip(accumulate, grads[len(inputs) :]):
            if g is not None:
                _add_grad(t, g)
    return out


def write_gradients(params: Sequence[Tensor], vector: Tensor) -> None:
    """Add the flat D-vector ``vector`` into the ``.grad`` of ``params`` (in their order)."""
    total = sum(p.numel() for p in params)
    if vector.numel() != total:
        raise ValueError(f"write_gradients: vector has {vector.numel()} entries, parameters have {total}")
    offset = 0
    for p in params:
        n = p.numel()
        chunk = vector[offset : offset + n].reshape(p.shape).to(p.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.add_(chunk)
        offset += n


def unflatten_like(vector: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat D-vector into views shaped (and typed) like ``tensors``."""
    total = sum(t.numel() for t in tensors)
    if vector.numel() != total:
        raise ValueError(f"unflatten_like: vector has {vector.numel()} entries, tensors have {total}")
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(vector[offset : offset + n].reshape(t.shape).to(t.dtype))
        offset += n
    return out


def gramian(grads: Tensor) -> Tensor:
    """The K x K Gramian G G^T of the task gradients, in float64 on the CPU (for small solvers)."""
    g = grads if grads.dtype in (torch.float32, torch.float64) else grads.float()
    return (g @ g.T).double().cpu()


def default_gramian_block(inputs: Sequence[Tensor], k: int) -> int:
    """The block budget of the Gramian path: ceil(D / K) elements, so a block's K rows hold at most
    about one gradient's worth (D floats), never the K x D matrix (unless one tensor is most of D)."""
    d = sum(t.numel() for t in inputs)
    return max(1, -(-d // max(1, k)))


def gramian_blockwise(
    losses: Sequence[Tensor],
    inputs: Sequence[Tensor],
    max_block: int | None = None,
    retain_graph: bool = False,
    *,
    accumulate: Sequence[Tensor] = (),
    reduce: Callable[[Tensor], Tensor] | None = None,
    scale: float = 1.0,
) -> Tensor:
    """The K x K Gramian of the task gradients w.r.t. ``inputs``, never holding the K x D matrix.

    ``inputs`` are grouped, in order, into blocks of at most ``max_block`` elements (None:
    :func:`default_gramian_block`, ceil(D / K); a tensor larger than that is a block of its own); for
    each block one vmapped backward over the K losses gives its K x D_b rows, whose Gramian is
    accumulated in float64 and the rows freed. ``accumulate``: tensors whose ``.grad`` also receives
    sum_k dL_k/dt, computed in the first block's pass (the task-specific parameters: no extra pass).
    ``reduce``: applied to each block's K x D_b rows before its Gramian (the mean over processes under
    DDP, so the result is the Gramian of the averaged gradients). ``scale``: the rows are divided by it
    (a GradScaler's scale on the losses). Peak extra memory: K x (largest block) floats plus one
    batched backward's activation gradients; cost: one batched backward per block, each through the
    part of the graph above its block only. The update then needs one more backward of sum_k w_k L_k.
    Returned in float64 on the CPU, like :func:`gramian`. Raises (no fallback) where an operator has
    no batching rule, as the "batched" path.
    """
    items = [loss.reshape(()) for loss in losses]
    inputs, accumulate = list(inputs), list(accumulate)
    k = len(items)
    budget = default_gramian_block(inputs, k) if max_block is None else int(max_block)
    blocks: list[list[Tensor]] = []
    size = 0
    for t in inputs:
        if blocks and size + t.numel() <= budget:
            blocks[-1].append(t)
            size += t.numel()
        else:
            blocks.append([t])
            size = t.numel()
    out = torch.zeros(k, k, dtype=torch.float64)
    if not items:
        return out
    eye = torch.eye(k, dtype=items[0].dtype, device=items[0].device)
    live = [(o, eye[:, j]) for j, o in enumerate(items) if o.requires_grad]
    if not live:
        return out
    if not blocks and accumulate:
        blocks = [[]]
    for i, block in enumerate(blocks):
        extra = accumulate if i == 0 else []
        grads = torch.autograd.grad(
            [o for o, _ in live],
            block + extra,
            grad_outputs=[c for _, c in live],
            is_grads_batched=True,
            allow_unused=True,
            retain_graph=retain_graph or i < len(blocks) - 1,
        )
        for t, g in zip(extra, grads[len(block) :]):
            if g is not None:
                _add_grad(t, g.sum(0))
        if block:
            rows = _empty(k, block)
            _fill_rows(rows, slice(0, k), grads[: len(block)], block)
            del grads
            if reduce is not None:
                rows = reduce(rows)
            if scale != 1.0:
                rows = rows / scale
            out += exact_gramian(rows)
            del rows
        else:
            del grads
    return out


def weighted_backward(losses: Sequence[Tensor], weights: Tensor) -> None:
    """Back-propagate sum_k w_k L_k: every parameter's ``.grad`` gets sum_k w_k dL_k/dtheta, the
    update of a Gramian-only method (shared parameters) and the weighted task gradients (heads)."""
    total = sum(w * loss.reshape(()) for w, loss in zip(weights.tolist(), losses))
    total.backward()
