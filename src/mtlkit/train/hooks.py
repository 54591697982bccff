"""Extension points of the training loop: a :class:`Hook` runs at fixed points of a run.

As detectron2's trainer hooks: ``before_train`` / ``after_train`` around the run (``after_train``
once every epoch finished, before results.json is written), ``before_epoch`` / ``after_epoch``
around each epoch (``after_epoch`` once it is evaluated and committed, with its record),
``before_step`` / ``after_step`` around each optimisation step, and ``results``: fields the hook
adds to results.json. Every method is a no-op: a hook overrides what it needs. Hooks run on every
process, in the order given. ``fit(hooks=[...])`` takes your own; ``mtlkit train`` adds the ones a
weighting method needs (:class:`MetaStep`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from mtlkit.records import EpochRecord
    from mtlkit.train.loop import Loop
    from mtlkit.weighting import MetaSplit


class Hook:
    """A piece of a run the loop calls at fixed points (module docstring); every method is a no-op."""

    def before_train(self, loop: Loop) -> None:
        """Before the first epoch of this call (also when a run resumes)."""

    def after_train(self, loop: Loop) -> None:
        """After the last epoch, before results.json is written."""

    def before_epoch(self, loop: Loop, epoch: int) -> None:
        """Before training epoch ``epoch`` (0-based)."""

    def after_epoch(self, loop: Loop, record: EpochRecord) -> None:
        """After an epoch is trained, evaluated and committed (``record.epoch`` is 1-based)."""

    def before_step(self, loop: Loop, batch: dict[str, Tensor]) -> None:
        """Before each optimisation step, with the step's batch (on the device)."""

    def after_step(self, loop: Loop, batch: dict[str, Tensor], losses: Tensor) -> None:
        """After each optimisation step, with its K detached task losses."""

    def results(self) -> dict[str, Any]:
        """Fields this hook adds to results.json (beside the schema's); none by default."""
        return {}


class MetaStep(Hook):
    """A bilevel method's meta step before each training step (Auto-Lambda's :class:`MetaSplit`).

    results.json records the split (``meta_split``: its source, fraction and sizes).
    """

    def __init__(self, split: MetaSplit) -> None:
        self.split = split

    def before_step(self, loop: Loop, batch: dict[str, Tensor]) -> None:
        self.split.step(loop.model, loop.tasks, batch, loop.optimizer.param_groups[0]["lr"])

    def results(self) -> dict[str, Any]:
        return {"meta_split": self.split.describe()}


class RunRecord(Hook):
    """A hook that only adds fixed fields to results.json (``dataset.label_fraction``'s subsets)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def results(self) -> dict[str, Any]:
        return dict(self.fields)
