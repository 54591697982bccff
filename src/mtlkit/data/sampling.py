"""Sample order: per-epoch shuffles, evaluation shards and dataset-defined batches, per process.

A training run's order depends only on (seed, epoch): :class:`EpochShuffle` in one process, a
DistributedSampler on the same permutation under torchrun (rank r's step-i batch is part of the
single-process batch i), so a run resumes the same on any number of processes. Datasets that
batch themselves (one domain per batch) give their batches per epoch; :class:`EpochBatches`
shards them. :func:`make_loader` builds the DataLoader of a split from these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, cast

import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mtlkit.errors import ConfigError

#: multiplier turning ``cfg.seed`` into the base seed of the per-epoch shuffles (kept from 0.1)
EPOCH_SEED_STRIDE = 1_000_003


def world_size() -> int:
    """Number of processes in the default group (1 outside torchrun)."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def local_batch_size(global_batch: int) -> int:
    """Per-rank batch size: ``train.batch_size`` is the global batch, split over the ranks."""
    n = world_size()
    if global_batch % n:
        raise ConfigError(f"train.batch_size={global_batch} is not divisible by the {n} processes")
    return global_batch // n


def epoch_seed(seed: int) -> int:
    """Base seed of the training shuffles; epoch e uses ``epoch_seed(seed) + e``."""
    return seed * EPOCH_SEED_STRIDE


class EpochShuffle(Sampler[int]):
    """Single-process sampler: a permutation drawn from ``epoch_seed(seed) + epoch`` (or 0..n-1).

    It draws exactly what ``RandomSampler`` with that generator (and DistributedSampler with the
    same seed) draws; ``set_epoch`` lets one long-lived loader (persistent workers) serve all epochs.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(epoch_seed(self.seed) + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class EvalShard(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample read once over all ranks, no padding.

    (DistributedSampler pads the last round with repeated samples, which would count them twice
    in the metrics.)
    """

    def __init__(self, n: int, r: int, world: int) -> None:
        self.n, self.r, self.world = n, r, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.r, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.r, self.n, self.world))


def train_sampler(dataset: Dataset, global_batch: int, seed: int) -> tuple[Sampler[int], int, bool]:
    """``(sampler, per-rank batch size, drop_last)`` of the training loader; call ``set_epoch`` per epoch.

    One process: :class:`EpochShuffle`, dropping the last incomplete batch when there is more than
    one batch. Several: a DistributedSampler on the same permutation; rank r's step-i batch is
    ``perm[i*B + r :: world]`` within global batch i, so the ranks together see the same samples
    per step as one process with batch ``B``.
    """
    n = len(cast(Sized, dataset))  # map-style datasets have a length (torch's Dataset does not declare it)
    drop_last = n > global_batch
    if world_size() == 1:
        return EpochShuffle(n, seed, shuffle=True), global_batch, drop_last
    local = local_batch_size(global_batch)
    sampler: Sampler[int] = DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=epoch_seed(seed), drop_last=drop_last
    )
    return sampler, local, drop_last


def eval_sampler(dataset: Dataset) -> Sampler[int]:
    """In order in one process; a padding-free shard per rank under DDP."""
    n = len(cast(Sized, dataset))
    if world_size() == 1:
        return EpochShuffle(n, 0, shuffle=False)
    return EvalShard(n, rank(), world_size())


class EpochBatches:
    """A dataset's own batch sampler (one domain per batch), re-drawn per epoch and sharded.

    ``make(epoch)`` returns the global batches of an epoch. Training: each global batch is split
    into ``world`` contiguous parts (batches smaller than ``world`` are skipped, so every rank runs
    the same number of steps on the same domain). Evaluation: whole batches, ``rank::world``.
    """

    def __init__(self, make: Callable[[int], Iterable[list[int]]], train: bool) -> None:
        self.make, self.train, self.epoch = make, train, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the batches of ``epoch``."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        batches = [list(b) for b in self.make(self.epoch)]
        n, r = world_size(), rank()
        if n == 1:
            return batches
        if not self.train:
            return batches[r::n]
        out = []
        for b in batches:
            if len(b) < n:
                continue
            size, extra = divmod(len(b), n)
            start = r * size + min(r, extra)
            out.append(b[start : start + size + (1 if r < extra else 0)])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def set_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> None:
    """Point a long-lived loader's sampler (and its dataset's augmentation) at ``epoch``."""
    objs: tuple[Any, ...] = (
        loader.sampler,
        loader.batch_sampler,
        getattr(loader.batch_sampler, "sampler", None),
        loader.dataset,
    )
    for obj in objs:
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


BatchMaker = Callable[[int], Iterable[list[int]]]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    batches: BatchMaker | None = None,
) -> DataLoader:
    """A loader whose sample order depends only on (seed, epoch), not on the processes or workers.

    Build it once and call :func:`set_epoch` before each epoch: the sampler and the dataset's
    augmentation move to that epoch, so workers can persist across epochs (they do when the dataset
    derives its randomness from the epoch, i.e. has ``set_epoch``). Training batches are global
    (``batch_size`` split over the processes); evaluation batches are per process. ``batches``
    (epoch -> list of index lists) replaces the shuffle for datasets that batch themselves.
    """
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": num_workers > 0 and callable(getattr(dataset, "set_epoch", None)),
    }
    if batches is not None:
        loader = DataLoader(dataset, batch_sampler=EpochBatches(batches, train), **kwargs)
    elif train:
        sampler, local_bs, drop_last = train_sampler(dataset, batch_size, seed)
        loader = DataLoader(dataset, batch_size=local_bs, sampler=sampler, drop_last=drop_last, **kwargs)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=eval_sampler(dataset), **kwargs)
    set_epoch(loader, epoch)
    return loader
