"""Partially labelled training data: ``dataset.label_fraction: {task: fraction}`` on any dataset.

:class:`LabelFraction` wraps a split's Dataset and keeps, for each named task, the labels of a
fixed subset of its samples: ``round(fraction * N)`` sample indices (at least one), drawn by
:func:`labelled_indices` from a generator seeded with the run seed and the task's name (CRC-32, not
Python's salted ``hash``). The subset depends only on (seed, task, N, fraction): the same every
epoch, after a resume and in every process and DataLoader worker. The other samples carry the
kind's :meth:`~mtlkit.tasks.base.TaskKind.unlabelled` target and ``"<task>/labelled" = False``
(:func:`mtlkit.tasks.base.labelled_key`); losses average over the labelled samples of a batch and
a task with none in a batch is dropped from that step (:mod:`mtlkit.train.step`). Only the training
split is thinned: validation keeps every label, so metrics stay comparable across fractions.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlkit.errors import ConfigError
from mtlkit.tasks import Task
from mtlkit.tasks.base import labelled_key


def labelled_indices(n: int, fraction: float, *, seed: int, task: str) -> list[int]:
    """The sorted indices of the ``round(fraction * n)`` samples (at least 1) that keep ``task``'s label.

    A permutation of ``range(n)`` from a CPU generator seeded with ``seed`` and the CRC-32 of the task's
    name; its first indices are kept. Keyword-only: a swapped seed and task would pick another subset.
    """
    if n <= 0:
        return []
    keep = min(n, max(1, round(fraction * n)))
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(task.encode())) % 2**63)
    return sorted(torch.randperm(n, generator=gen)[:keep].tolist())


class LabelFraction(Dataset):
    """``dataset`` with only a fixed, seeded subset of some tasks' labels (module docstring).

    ``fractions``: {task name: fraction in (0, 1]}. Attributes other than these are the wrapped
    dataset's (``set_epoch``, ``size``, a batch sampler's needs), so it stands in for it anywhere.
    """

    def __init__(self, dataset: Dataset, tasks: Sequence[Task], fractions: Mapping[str, float], *, seed: int) -> None:
        by_name = {t.name: t for t in tasks}
        unknown = [n for n in fractions if n not in by_name]
        if unknown:
            raise ConfigError(
                f"dataset.label_fraction: unknown task {unknown[0]!r} (the run's tasks: {', '.join(by_name)})"
            )
        self.dataset, self.seed = dataset, int(seed)
        self.fractions = {n: float(f) for n, f in fractions.items()}
        self.tasks = [by_name[n] for n in self.fractions]
        n = len(dataset)  # type: ignore[arg-type]
        self.labelled = {
            name: frozenset(labelled_indices(n, f, seed=self.seed, task=name)) for name, f in self.fractions.items()
        }

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = dict(self.dataset[index])
        for task in self.tasks:
            key = labelled_key(task.name)
            keep = index in self.labelled[task.name] and bool(sample.get(key, True))
            if not keep and task.name in sample:
                hw = (int(sample["image"].shape[-2]), int(sample["image"].shape[-1]))
                sample[task.name] = task.unlabelled(hw)
            sample[key] = torch.tensor(keep)
        return sample

    def describe(self) -> dict[str, Any]:
        """What results.json records under ``label_fraction``: per task the fraction, the seed, the number
        of labelled training samples and the split's size."""
        n = len(self)
        return {
            name: {"fraction": f, "seed": self.seed, "labelled": len(self.labelled[name]), "samples": n}
            for name, f in self.fractions.items()
        }


def with_label_fraction(
    dataset: Dataset, tasks: Sequence[Task], fractions: Mapping[str, float], *, seed: int
) -> Dataset:
    """``dataset`` itself when ``fractions`` is empty, else its :class:`LabelFraction`."""
    if not fractions:
        return dataset
    return LabelFraction(dataset, tasks, fractions, seed=seed)
