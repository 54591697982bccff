"""Per-task gradients for gradient-level methods: the K x D Jacobian of the task losses.

``per_task_gradients(losses, inputs)`` returns the matrix whose row k is the flattened gradient of
``losses[k]`` w.r.t. ``inputs`` (the shared parameters, or the shared representation tensors).

How: one *batched* backward pass, ``torch.autograd.grad(losses, inputs, grad_outputs=I_K,
is_grads_batched=True)``, which vmaps the backward graph over the K rows of the identity, instead of
K separate backward passes. Some operators have no batching rule (custom autograd functions that
call ``.item()``, some in-place ops); then the call raises, and we fall back to a loop of K
``autograd.grad(losses[k], retain_graph=True)`` calls. The failure is remembered per graph
signature (the shapes/dtypes of ``inputs``, which identify a model type and mode; or an explicit
``key``), so the batched attempt is paid once per model type, not every step.
``gradient_path(key)`` says which path a signature took.

Memory: the result is K x D floats (D = total size of ``inputs``). The batched path also holds K
copies of each intermediate gradient during the backward, and the per-input gradients exist next
to the flat matrix for a moment: peak about 2 K D floats plus K times one backward's activation
gradients. ``chunk_size=c`` runs the batched backward over c rows at a time: peak (K + c) D floats
plus c times one backward's activation gradients. The loop path peaks at (K + 1) D floats.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

#: graph signature -> "batched" or "loop": the path the last call with that signature took.
_PATHS: dict[Hashable, str] = {}
#: graph signature -> why the batched backward failed (the first line of the error).
_BATCHING_FAILED: dict[Hashable, str] = {}


def graph_key(inputs: Sequence[Tensor]) -> tuple:
    """The default memory key of a call: shapes, dtypes and device types of ``inputs``."""
    return tuple((tuple(t.shape), t.dtype, t.device.type) for t in inputs)


def gradient_path(key: Hashable) -> str | None:
    """``"batched"`` or ``"loop"``: the path the last call with this key took (None if never)."""
    return _PATHS.get(key)


def batching_failure(key: Hashable) -> str | None:
    """Why the batched backward failed for ``key`` (None if it worked or was never tried)."""
    return _BATCHING_FAILED.get(key)


def forget_gradient_paths() -> None:
    """Clear the remembered paths and failures (tests; or after changing a model's code)."""
    _PATHS.clear()
    _BATCHING_FAILED.clear()


def per_task_gradients(
    losses: Tensor,
    inputs: Sequence[Tensor],
    retain_graph: bool = False,
    *,
    key: Hashable | None = None,
    chunk_size: int | None = None,
    strategy: str = "auto",
) -> Tensor:
    """The K x D matrix of flattened gradients of each of the K ``losses`` w.r.t. ``inputs``.

    ``strategy``: "auto" (batched, falling back to the loop once per key), "batched" (no
    fallback: errors propagate) or "loop". Inputs a loss does not reach get zero gradients.
    """
    if strategy not in ("auto", "batched", "loop"):
        raise ValueError(f"strategy must be 'auto', 'batched' or 'loop', got {strategy!r}")
    inputs = list(inputs)
    losses = losses.reshape(-1)
    k = losses.numel()
    key = graph_key(inputs) if key is None else key
    if not losses.requires_grad or k == 0:
        return _zeros(k, inputs)
    if k == 1:
        _PATHS[key] = "batched"
        return _flat_rows(_grad_once(losses[0], inputs, retain_graph), inputs, 1)
    use_batched = strategy == "batched" or (strategy == "auto" and key not in _BATCHING_FAILED)
    if use_batched:
        # Until a key has worked once, keep the graph: a failed batched attempt must leave it whole
        # for the loop fallback.
        keep = retain_graph or (strategy == "auto" and _PATHS.get(key) != "batched")
        try:
            out = _batched(losses, inputs, keep, chunk_size)
        except RuntimeError as err:
            if strategy == "batched":
                raise
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _BATCHING_FAILED[key] = reason
            warnings.warn(
                f"per-task gradients: batched backward failed ({reason}); using {k} backward passes "
                "for this model from now on",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            _PATHS[key] = "batched"
            return out
    _PATHS[key] = "loop"
    return _looped(losses, inputs, retain_graph)


def _zeros(k: int, inputs: Sequence[Tensor]) -> Tensor:
    """A K x D zero matrix (losses that reach no input)."""
    d = sum(t.numel() for t in inputs)
    like = inputs[0] if inputs else torch.zeros(())
    return torch.zeros(k, d, dtype=_grad_dtype(inputs), device=like.device)


def _grad_dtype(inputs: Sequence[Tensor]) -> torch.dtype:
    """The dtype of the flat matrix: the widest floating dtype among ``inputs``."""
    dtypes = [t.dtype for t in inputs if t.is_floating_point()]
    if not dtypes:
        return torch.get_default_dtype()
    out = dtypes[0]
    for dt in dtypes[1:]:
        out = torch.promote_types(out, dt)
    return out


def _grad_once(loss: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> list[Tensor | None]:
    return list(torch.autograd.grad(loss, inputs, retain_graph=retain_graph, allow_unused=True))


def _flat_rows(grads: Sequence[Tensor | None], inputs: Sequence[Tensor], k: int) -> Tensor:
    """Concatenate per-input gradients (each ``(k, *shape)`` or None) into a k x D matrix."""
    dtype = _grad_dtype(inputs)
    device = inputs[0].device
    d = sum(t.numel() for t in inputs)
    out = torch.empty(k, d, dtype=dtype, device=device)
    offset = 0
    for g, t in zip(grads, inputs):
        n = t.numel()
        if g is None:
            out[:, offset:offset + n].zero_()
        else:
            out[:, offset:offset + n].copy_(g.reshape(k, n))
        offset += n
    return out


def _batched(losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool, chunk_size: int | None) -> Tensor:
    """All rows by vmapped backward passes over (chunks of) the identity's rows."""
    k = losses.numel()
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
    step = k if not chunk_size or chunk_size >= k else max(1, int(chunk_size))
    if step == k:
        grads = torch.autograd.grad(
            losses, inputs, grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph, allow_unused=True
        )
        return _flat_rows(grads, inputs, k)
    out = torch.empty(k, sum(t.numel() for t in inputs), dtype=_grad_dtype(inputs), device=inputs[0].device)
    for start in range(0, k, step):
        rows = eye[start:start + step]
        last = start + step >= k
        grads = torch.autograd.grad(
            losses, inputs, grad_outputs=rows, is_grads_batched=True,
            retain_graph=retain_graph or not last, allow_unused=True,
        )
        out[start:start + rows.shape[0]] = _flat_rows(grads, inputs, rows.shape[0])
        del grads
    return out


def _looped(losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> Tensor:
    """Row by row: K backward passes through the same (retained) graph."""
    k = losses.numel()
    out = torch.empty(k, sum(t.numel() for t in inputs), dtype=_grad_dtype(inputs), device=inputs[0].device)
    for i in range(k):
        if losses[i].requires_grad:
            grads = _grad_once(losses[i], inputs, retain_graph or i < k - 1)
            out[i] = _flat_rows(grads, inputs, 1)[0]
        else:
            out[i].zero_()
    return out


def write_gradients(params: Sequence[Tensor], vector: Tensor) -> None:
    """Add the flat D-vector ``vector`` into the ``.grad`` of ``params`` (in their order)."""
    total = sum(p.numel() for p in params)
    if vector.numel() != total:
        raise ValueError(f"write_gradients: vector has {vector.numel()} entries, parameters have {total}")
    offset = 0
    for p in params:
        n = p.numel()
        chunk = vector[offset:offset + n].reshape(p.shape).to(p.dtype)
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
        out.append(vector[offset:offset + n].reshape(t.shape).to(t.dtype))
        offset += n
    return out


def gramian(grads: Tensor) -> Tensor:
    """The K x K Gramian G G^T of the task gradients, in float64 on the CPU (for small solvers)."""
    g = grads if grads.dtype in (torch.float32, torch.float64) else grads.float()
    return (g @ g.T).double().cpu()
