"""Multi-process training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

Process groups, reductions and synchronised BatchNorm; how samples are drawn per rank lives in
:mod:`mtlkit.data.sampling`. Every helper is a no-op in a single process, so the trainer has one
code path. Under torchrun
(``WORLD_SIZE`` > 1) the process group is created from the environment (NCCL on CUDA, gloo on CPU)
and:

* ``train.batch_size`` is the global batch: each rank reads ``batch_size / world_size`` samples per
  step. The training sampler is a :class:`~torch.utils.data.DistributedSampler` seeded so that the
  union of the ranks' batches at step i is exactly the single-process batch i of the same epoch
  (same permutation, same drop-last rule): a run's data order does not depend on the world size,
  which is what makes a resume on a different number of GPUs continue the same run.
* BatchNorm layers become synchronised (statistics of the global batch): torch's SyncBatchNorm on
  CUDA, :class:`DistBatchNorm` elsewhere (gloo on CPU, where torch's has no kernel).
* Loss-level methods see the global mean of every task loss (:func:`globalize`), so weights that
  depend on loss values are the same on every rank and equal the single-process ones.
* Gradient-level methods bypass DDP's hooks: the per-task gradient matrix is averaged across ranks
  (parameter mode) or gathered (representation mode) before the method combines it.
* Evaluation shards the validation set without padding and the metric meters sum their state.
* Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtlkit.data.sampling import (  # noqa: F401  (sampling lives in mtlkit.data; names kept here)
    EPOCH_SEED_STRIDE,
    EpochBatches,
    EpochShuffle,
    EvalShard,
    epoch_seed,
    eval_sampler,
    local_batch_size,
    set_epoch,
    train_sampler,
)
from mtlkit.errors import ConfigError
from mtlkit.train.runtime import select_device

if TYPE_CHECKING:
    from mtlkit.weighting.base import Weighting

_owned = False


def world_size() -> int:
    """Number of processes in the default group (1 outside torchrun)."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``), which picks its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0)."""
    return rank() == 0


def init() -> None:
    """Join the process group torchrun describes in the environment (once); no-op otherwise."""
    global _owned
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(backend=backend)
    _owned = True


def cleanup() -> None:
    """Leave the process group if :func:`init` created it."""
    global _owned
    if _owned and tdist.is_initialized():
        tdist.destroy_process_group()
    _owned = False


def device_for(name: str) -> torch.device:
    """The configured device; under torchrun with CUDA, this rank's GPU."""
    if world_size() > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
        return torch.device("cuda", local_rank())
    return select_device(name)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of each rank's input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        tdist.all_reduce(out)
        return out


class DistBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks, on any device and backend (gloo on CPU).

    Training under a process group: two differentiable all-reduces per layer (sums, then centred
    squares) give the exact global mean and biased variance; the backward all-reduces the matching
    gradient sums, so gradients equal those of one BatchNorm over the concatenated batch. Running
    statistics are updated with the unbiased global variance, like ``nn.BatchNorm``. Otherwise
    (eval mode, one process) it is a plain BatchNorm. Statistics and normalisation are computed in
    float64 (as ATen's CPU BatchNorm accumulates): float32 sums would make the gradients of
    nearly scale-invariant layers differ from one process's far beyond rounding. It is the
    fallback for devices without ``nn.SyncBatchNorm`` kernels, where precision beats speed.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D input)")

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` with the statistics of the global batch (training under DDP)."""
        if not (self.training and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.double()
        count = torch.full((1,), x.numel() // x.shape[1], dtype=xf.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        total = stats[-1].detach()
        mean = stats[:-1] / total
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / total
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.double().view(shape) + self.bias.double().view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean.detach(), var.detach(), total)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, total: Tensor) -> None:
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        assert tracked is not None and running_mean is not None and running_var is not None  # track_running_stats
        tracked.add_(1)
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1).clamp(min=1)
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_(unbiased.to(running_var.dtype), factor)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def convert_sync_batchnorm(module: ModuleT, device: torch.device) -> ModuleT:
    """Every BatchNorm of ``module`` synchronised across ranks (no-op in one process).

    CUDA: ``nn.SyncBatchNorm`` (fused kernels). Other devices: :class:`DistBatchNorm`. Parameters
    and buffers are the same objects, so state-dict keys and optimizer references are unchanged.
    """
    if world_size() == 1:
        return module
    if device.type == "cuda":
        return cast(ModuleT, nn.SyncBatchNorm.convert_sync_batchnorm(module))
    return cast(ModuleT, _swap_batchnorm(module))


def _swap_batchnorm(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm | DistBatchNorm):
        out = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _swap_batchnorm(child))
    return out


def wrap(model: nn.Module, device: torch.device, partial_batches: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` when more than one process runs.

    ``partial_batches``: batches may carry only some tasks (one domain per batch), so the set of
    used parameters changes from step to step and DDP must look for unused ones every step.
    Otherwise the graph is declared static (DDP finds never-used parameters once, at no per-step
    cost).
    """
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    if partial_batches:
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True)


def unwrap_ddp(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (itself otherwise)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself in one process)."""
    if world_size() == 1:
        return t
    t = t.clone()
    tdist.all_reduce(t)
    return t


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks."""
    return all_reduce_sum(t) / world_size() if world_size() > 1 else t


def all_gather_cat(t: Tensor, dim: int) -> Tensor:
    """Every rank's ``t`` (same shape on all) concatenated along ``dim`` in rank order."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    tdist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def globalize(losses: Tensor) -> Tensor:
    """Task losses whose value is the mean over ranks and whose gradient is this rank's own.

    DDP averages the gradients, so ``combine(globalize(L))`` back-propagates the gradient of
    ``combine`` applied to the global mean losses, also for methods whose weights depend on the
    loss values (and the weights are identical on every rank).
    """
    if world_size() == 1:
        return losses
    local = losses.detach()
    return losses + (all_reduce_mean(local) - local)


def average_grads(params: Iterable[Tensor]) -> None:
    """Average ``.grad`` of ``params`` across ranks (used where DDP's hooks are bypassed)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, e.g. before evaluating."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in module.buffers():
            tdist.broadcast(t.data, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects: run paths, checkpoint states)."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. renders a dataset cache), the other ranks after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def barrier() -> None:
    """Wait for every rank."""
    if world_size() > 1:
        tdist.barrier()


def check_weighting(weighting: Weighting) -> None:
    """Reject a weighting method that cannot run under several processes, with the reason.

    Every loss-level method is supported (:func:`globalize`), and every gradient-level method in
    both modes (per-task gradients averaged / gathered before ``aggregate``). A method that keeps
    state tied to one process declares ``supports_distributed = False`` and is refused here.
    """
    if world_size() == 1 or weighting.supports_distributed:
        return
    name, why = type(weighting).__name__, weighting.distributed_note
    raise ConfigError(
        f"weighting.name: {name} does not support multi-process training ({why}); "
        "run it in one process or pick another method"
    )
