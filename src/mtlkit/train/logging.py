"""Where a run reports to: the console, ``metrics.jsonl``, TensorBoard, or any tracker with the same four calls.

A logger has ``log_params(dict)`` (once, at the start), ``log_epoch(EpochRecord)`` (after every
epoch), ``log_artifact(path)`` (files worth keeping: results.json, the best checkpoint) and
``finish(status)``. The loop talks to one :class:`Loggers`, a list of them; adding a tracker is
one class with these methods (``mtlkit.trackers`` adds MLflow / W&B ones). Only rank 0 logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from mtlkit.records import EpochRecord
from mtlkit.tasks import Task
from mtlkit.train.rundir import write_history


class Logger(Protocol):
    """The four calls every logger answers."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_epoch(self, record: EpochRecord) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def finish(self, status: str) -> None: ...


class BaseLogger:
    """A logger that ignores every call: subclasses override the ones they use."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Record the run's settings (the resolved config)."""

    def log_epoch(self, record: EpochRecord) -> None:
        """Record one finished epoch."""

    def log_artifact(self, path: Path) -> None:
        """Keep a file the run wrote."""

    def finish(self, status: str) -> None:
        """The run ended (``finished``, ``failed``, ``interrupted``)."""


class ConsoleLogger(BaseLogger):
    """One line per epoch: each task's training loss and main validation metric, the epoch's time."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def log_epoch(self, record: EpochRecord) -> None:
        tqdm.write(epoch_line(record, self.tasks))


def run_header(run_path: Path, arch: str, parameters: int, train_loader: Any, val_loader: Any,
               max_steps: int | None = None) -> str:
    """What a run is about to do, printed before its first progress bar (both ``mtlkit train`` and ``fit``).

    ``run folder: runs/x | model: mtan, 1.23 M parameters | data: 240 train / 60 val samples, 60 steps per epoch``
    """
    def length(obj: Any) -> int | None:
        try:
            return len(obj)
        except TypeError:  # an iterable without a length
            return None

    steps = length(train_loader)
    if max_steps is not None:
        steps = max_steps if steps is None else min(steps, max_steps)
    n_train, n_val = length(getattr(train_loader, "dataset", ())), length(getattr(val_loader, "dataset", ()))
    return (f"run folder: {run_path} | model: {arch}, {parameters / 1e6:.2f} M parameters | "
            f"data: {n_train if n_train is not None else '?'} train / {n_val if n_val is not None else '?'} val "
            f"samples, {steps if steps is not None else '?'} steps per epoch")


def epoch_line(record: EpochRecord, tasks: list[Task]) -> str:
    """``epoch   3 | seg loss 1.234 miou 0.3 | ... | 4.2s``."""
    parts = [f"epoch {record.epoch:>3}"]
    for t in tasks:
        key = f"{t.name}/{t.main_metric}"
        if key in record.val:
            loss = record.train.get(f"loss/{t.name}", float("nan"))
            parts.append(f"{t.name} loss {loss:.3f} {t.main_metric} {record.val[key]:.4g}")
    return " | ".join(parts) + f" | {record.epoch_time:.1f}s"


class JsonlLogger(BaseLogger):
    """``metrics.jsonl``: rewritten atomically with every epoch so far (a resume continues the file;
    non-finite values as the run folder's strict JSON writes them)."""

    def __init__(self, run_dir: Path, history: list[EpochRecord] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.history = list(history or [])

    def log_epoch(self, record: EpochRecord) -> None:
        self.history.append(record)
        write_history(self.path.parent, [r.to_dict() for r in self.history])


class TrackersLogger(BaseLogger):
    """The run's experiment trackers (:mod:`mtlkit.trackers`: TensorBoard, MLflow, W&B) as one logger.

    Epoch records go as plain dicts; the run's files go as artifacts once it finished. The trackers
    are closed with the run's status by :func:`mtlkit.trackers.tracking`, not here.
    """

    def __init__(self, trackers: Any, run_dir: Path) -> None:
        self.trackers, self.run_dir = trackers, Path(run_dir)

    def log_params(self, params: dict[str, Any]) -> None:
        self.trackers.log_params(params)

    def log_epoch(self, record: EpochRecord) -> None:
        self.trackers.log_epoch(record.to_dict())

    def finish(self, status: str) -> None:
        if status == "finished":
            from mtlkit.trackers import log_run_files

            log_run_files(self.trackers, self.run_dir)


class Loggers(BaseLogger):
    """Several loggers as one: each call goes to every logger in order."""

    def __init__(self, loggers: list[Logger] | None = None) -> None:
        self.loggers = list(loggers or [])

    def log_params(self, params: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_params(params)

    def log_epoch(self, record: EpochRecord) -> None:
        for lg in self.loggers:
            lg.log_epoch(record)

    def log_artifact(self, path: Path) -> None:
        for lg in self.loggers:
            lg.log_artifact(path)

    def finish(self, status: str) -> None:
        for lg in self.loggers:
            lg.finish(status)
