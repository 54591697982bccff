"""Multi-process training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

Every helper is a no-op in a single process, so the trainer has one code path. Under torchrun
(``WORLD_SIZE`` > 1) the process group is created from the environment (NCCL on CUDA, gloo on CPU),
each rank reads its shard of every epoch, gradients are averaged by DDP (or, for gradient-balancing
methods, the per-task gradient matrix is averaged before the method combines it), and only rank 0
writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

from mtlkit.errors import ConfigError
from mtlkit.train.runtime import select_device

_owned = False


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group torchrun describes in the environment (once); no-op otherwise."""
    global _owned
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
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
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return select_device(name)


def local_batch_size(global_batch: int) -> int:
    """Per-rank batch size: ``train.batch_size`` is the global batch, split over the ranks."""
    n = world_size()
    if global_batch % n:
        raise ConfigError(f"train.batch_size={global_batch} is not divisible by the {n} processes")
    return global_batch // n


def sampler(dataset: Dataset, shuffle: bool, seed: int, epoch: int) -> DistributedSampler | None:
    """A per-epoch DistributedSampler under DDP, else None (the trainer uses its own)."""
    if world_size() == 1:
        return None
    s = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)
    s.set_epoch(epoch)
    return s


def shard_batches(batches: Iterable[list[int]]) -> Iterable[list[int]]:
    """Every ``world_size``-th batch of a batch sampler for this rank (whole batches per rank)."""
    n = world_size()
    if n == 1:
        return batches
    return _Shard(batches, rank(), n)


class _Shard:
    def __init__(self, batches: Iterable[list[int]], r: int, n: int) -> None:
        self.batches, self.r, self.n = list(batches), r, n

    def __iter__(self) -> Iterator[list[int]]:
        usable = len(self.batches) - len(self.batches) % self.n
        return iter(self.batches[self.r:usable:self.n])

    def __len__(self) -> int:
        return len(self.batches) // self.n


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when more than one process runs."""
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def grad_reducer(net: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """Averages a tensor across ranks (the per-task gradient matrix), or None in one process."""
    if world_size() == 1:
        return None
    return lambda t: all_reduce_mean(t)


def all_reduce_sum(t: Tensor) -> Tensor:
    if world_size() == 1:
        return t
    t = t.clone()
    tdist.all_reduce(t)
    return t


def all_reduce_mean(t: Tensor) -> Tensor:
    return all_reduce_sum(t) / world_size() if world_size() > 1 else t


def average_grads(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` of ``params`` across ranks (used where DDP's hooks are bypassed)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad /= world_size()


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()
