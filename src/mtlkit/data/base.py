"""The dataset interface: a registered builder gives the tasks and a torch Dataset per split.

Samples are dicts: ``"image"`` a float32 (3, H, W) tensor, plus one target per task under the
task's name: segmentation int64 (H, W) with -1 = ignore; depth float32 (1, H, W) with 0 =
missing; normal float32 (3, H, W) unit vectors with 0 = missing; classification int64 scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch.utils.data import Dataset

from mtlkit.config import DatasetConfig
from mtlkit.errors import ConfigError
from mtlkit.tasks import Task


class DatasetBuilder:
    """Base class of registered datasets; ``DATASETS.get(name)(cfg)`` makes one."""

    #: splits the dataset provides
    splits: tuple[str, ...] = ("train", "val")
    #: how the dataset batches: None = the default shuffled batches of any samples; else a method
    #: ``(dataset, batch_size, shuffle, seed, epoch) -> list of index batches`` (e.g. one domain per batch)
    batch_sampler: ClassVar[Callable[..., list[list[int]]] | None] = None
    #: the Dataset class :meth:`dataset` returns, when no other builder returns it: ``mtlkit.fit``
    #: records a dataset of this class under the builder's registered name (None: not declared)
    dataset_class: type | None = None

    def __init__(self, cfg: DatasetConfig) -> None:
        self.cfg = cfg

    def all_tasks(self) -> list[Task]:
        """Every task the dataset can provide under this config."""
        raise NotImplementedError

    def tasks(self) -> list[Task]:
        """The tasks to train: all of them, or the subset ``cfg.tasks`` names (in that order)."""
        tasks = {t.name: t for t in self.all_tasks()}
        if self.cfg.tasks is None:
            return list(tasks.values())
        unknown = [n for n in self.cfg.tasks if n not in tasks]
        if unknown:
            raise ConfigError(
                f"dataset.tasks: {', '.join(unknown)} not provided by {self.cfg.name!r} (it has {', '.join(tasks)})"
            )
        return [tasks[n] for n in self.cfg.tasks]

    def dataset(self, split: str, train: bool) -> Dataset:
        """The samples of ``split``; ``train`` turns augmentation on when the config asks for it."""
        raise NotImplementedError

    def check_files(self, progress: bool = False):
        """``mtlkit data check``'s report of every file, when the dataset checks itself (else None)."""
        return None
