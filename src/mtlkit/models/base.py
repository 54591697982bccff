"""The interface every architecture implements, so any weighting method runs with any of them.

A model maps an image batch to ``{task name: raw head output}``. It splits into ``encode`` (the
shared part, returning the list of shared tensors the task-specific parts read) and ``decode``
(task-specific parts), with ``forward(x) == decode(encode(x))``. Gradient methods in
representation mode take per-task gradients w.r.t. the tensors ``encode`` returns (the MGDA-UB
trick); in parameter mode, w.r.t. ``shared_parameters()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.tasks import Task


class MultiTaskModel(nn.Module):
    """Base class: subclasses implement ``encode``/``decode`` and say which parameters are shared."""

    #: False when the architecture has no shared representation (single-task, cross-stitch).
    supports_representation: bool = True
    #: what forward passes store under ``recording()``: "attention" (``attention/<task>/<block>``
    #: masks, shown by reports) and/or "stitch" (``alpha/<point>``; :meth:`stitch_alphas`)
    records: tuple[str, ...] = ()
    #: registered architecture whose one-task network is the #P reference (None: no reference)
    single_task_reference: str | None = None
    #: the architecture's name in report tables (None: its registered name)
    label: ClassVar[str | None] = None
    #: other names published tables give it (matched with ``label`` when reading ``report/references``)
    reference_names: ClassVar[tuple[str, ...]] = ()
    #: the backbone an architecture with its own fixed network is (``segnet`` for the MTAN paper's
    #: SegNet baselines): ``model.backbone`` may name it; None: only unset. Architectures written over
    #: any backbone subclass :class:`~mtlkit.models.over_backbone.BackboneModel` instead.
    own_backbone: ClassVar[str | None] = None
    #: ``build_model``'s arguments (arch, backbone, pretrained, width, options); None for a model built otherwise
    build_spec: dict[str, object] | None = None

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a model needs at least one task")
        self.tasks = list(tasks)
        self._record = False
        self.recorded: dict[str, Tensor] = {}

    def encode(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Task-specific parts: outputs of ``tasks`` (all when None) from the shared tensors."""
        raise NotImplementedError

    def forward(self, x: Tensor, tasks: list[str] | None = None) -> dict[str, Tensor]:
        return self.decode(self.encode(x), tasks)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss depends on (the ones gradient methods balance)."""
        raise NotImplementedError

    def task_parameters(self) -> list[nn.Parameter]:
        """All parameters that are not shared."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; cross-stitch overrides this to scale its alphas' lr."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (0-based) of ``epochs``; models with a schedule (LTB) override it."""

    @classmethod
    def single_task_parameters(cls, tasks: list[Task], width: float, **options: Any) -> float | None:
        """A family's own #P reference (e.g. the decathlon's WRN); None: one ``single_task_reference`` network."""
        return None

    def capabilities(self) -> dict[str, object]:
        """What reports may ask of this model (stored in results.json for unregistered models)."""
        return {"records": list(self.records), "single_task_reference": self.single_task_reference}

    def stitch_alphas(self) -> dict[str, Tensor]:
        """Learned mixing weights per stitch point (models whose ``records`` include "stitch")."""
        raise NotImplementedError(f"{type(self).__name__} has no stitch units")

    @contextmanager
    def recording(self) -> Iterator[dict[str, Tensor]]:
        """Within the block, forward passes store attention masks / stitch alphas in ``recorded``."""
        self._record, self.recorded = True, {}
        try:
            yield self.recorded
        finally:
            self._record = False

    def record(self, key: str, value: Tensor) -> None:
        """Store ``value`` under ``key`` if recording (free otherwise)."""
        if self._record:
            self.recorded[key] = value.detach()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
