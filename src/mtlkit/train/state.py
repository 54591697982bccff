"""The run state that survives a restart: epoch, best epoch, delta_m reference, history, wall time.

:class:`RunState` is what the loop updates each epoch; ``checkpoint(...)`` adds the objects' state
dicts and the RNG state to make ``checkpoints/last.pt``, and ``restore(...)`` reads one back into
the objects and returns the state (the checkpoint's keys are unchanged from earlier versions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlkit.errors import TrainingError, shorten
from mtlkit.records import EpochRecord
from mtlkit.train.runtime import rng_state, set_rng_state


@dataclass
class Best:
    """The best epoch so far by delta_m against the first epoch (score -inf before any epoch)."""

    score: float = -math.inf
    epoch: int = 0
    val: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch, "val": dict(self.val)}


@dataclass
class RunState:
    """Progress of a run between epochs (plain data: loads with ``weights_only=True``)."""

    epoch: int = 0  # epochs finished
    best: Best = field(default_factory=Best)
    reference: dict[str, float] | None = None  # first epoch's validation metrics (delta_m baseline)
    history: list[EpochRecord] = field(default_factory=list)
    wall_time: float = 0.0
    #: config edits a resume applied: ``{"key", "from", "to", "epoch"}`` (epoch: the first that ran with it)
    config_changes: list[dict[str, Any]] = field(default_factory=list)

    def record(self, rec: EpochRecord, score: float) -> bool:
        """Add an epoch's record; returns True when it is the new best."""
        self.history.append(rec)
        self.epoch = rec.epoch
        is_best = score > self.best.score or self.best.epoch == 0
        if is_best:
            self.best = Best(score, rec.epoch, dict(rec.val))
        return is_best

    def checkpoint(
        self,
        model: nn.Module,
        weighting: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler | None,
    ) -> dict[str, Any]:
        """The checkpoint dict: objects' states, RNG state and this run state."""
        return {
            "model": model.state_dict(),
            "weighting": weighting.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "epoch": self.epoch,
            "best": self.best.to_dict(),
            "reference": self.reference,
            "history": [r.to_dict() for r in self.history],
            "wall_time": self.wall_time,
            "config_changes": [dict(c) for c in self.config_changes],
        }

    @classmethod
    def restore(
        cls,
        ckpt: dict[str, Any],
        model: nn.Module,
        weighting: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler | None,
    ) -> RunState:
        """Load a checkpoint into the objects (and the RNGs) and return its run state."""
        model.load_state_dict(ckpt["model"])
        weighting.load_state_dict(ckpt["weighting"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return cls.from_checkpoint(ckpt)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], path: Path | str = "checkpoint") -> RunState:
        """The run state part of a checkpoint dict; a field of the wrong type is a TrainingError naming ``path``."""
        try:
            b = ckpt["best"]
            if not isinstance(b, dict):
                raise TypeError(f"field 'best' is a {type(b).__name__}, expected a mapping")
            history = ckpt["history"]
            if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
                raise TypeError("field 'history' is not a list of epoch records")
            reference = ckpt["reference"]
            if reference is not None and not isinstance(reference, dict):
                raise TypeError(f"field 'reference' is a {type(reference).__name__}, expected a mapping")
            return cls(
                _int(ckpt["epoch"], "epoch"),
                Best(_number(b["score"], "best.score"), _int(b["epoch"], "best.epoch"), _metrics(b["val"], "best.val")),
                reference,
                [EpochRecord.from_dict(r) for r in history],
                _number(ckpt["wall_time"], "wall_time"),
                _changes(ckpt.get("config_changes")),
            )
        except (TypeError, KeyError) as err:
            raise TrainingError(
                f"{path}: not a checkpoint mtlkit can resume ({err}); use the run's own checkpoints/last.pt"
            ) from None


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"field {what!r} is {shorten(value, 60)}, expected a count")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"field {what!r} is {shorten(value, 60)}, expected a number")
    return float(value)


def _metrics(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError(f"field {what!r} is a {type(value).__name__}, expected a mapping of metrics")
    return dict(value)


def _changes(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise TypeError("field 'config_changes' is not a list of changes")
    return [dict(c) for c in value]
