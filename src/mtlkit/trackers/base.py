"""The tracker interface, and the set of trackers a run logs to (each behind a background thread).

A tracker receives: the resolved config as parameters (once), one record per epoch (the
``metrics.jsonl`` object: train losses, validation metrics, task weights, learning rate), files
as artifacts (``results.json``, figures) and the run's final status. Calls go through a queue to
one thread per tracker, so a slow or unreachable server never slows training; a tracker that
raises warns once and is dropped for the rest of the run, and training goes on.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: final statuses a run reports to its trackers
FINAL_STATUSES = ("finished", "failed", "killed")
#: seconds the end of a run waits, for all trackers together, for their last calls (an unreachable
#: server costs at most this much, and one warning)
CLOSE_TIMEOUT = 5.0


class Tracker(ABC):
    """One experiment tracker; ``open`` made it ready for the run (or raised)."""

    #: the name in ``train.loggers``
    name: str = ""

    @abstractmethod
    def log_params(self, params: dict[str, Any]) -> None:
        """Record the run's resolved config (nested dict)."""

    @abstractmethod
    def log_epoch(self, record: dict[str, Any]) -> None:
        """Record one epoch (the metrics.jsonl object: epoch, time, lr, train, val, weights)."""

    @abstractmethod
    def log_artifact(self, path: Path) -> None:
        """Keep a file of the run (results.json, a figure) with the tracked run."""

    @abstractmethod
    def finish(self, status: str) -> None:
        """Close the tracked run with ``status`` (finished, failed or killed)."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and None kept as values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of an epoch record under the TensorBoard tag names (train/..., val/..., weights/..., lr)."""
    out = {f"{section}/{k}": float(v) for section in ("train", "val", "weights")
           for k, v in record.get(section, {}).items() if isinstance(v, (int, float))}
    if "lr" in record:
        out["lr"] = float(record["lr"])
    return out


class _Worker:
    """One tracker, opened and called on its own daemon thread; the first exception disables it, warning once."""

    def __init__(self, name: str, factory: Callable[[], Tracker]) -> None:
        self.name = name
        self.factory = factory
        self.tracker: Tracker | None = None
        self.error: str | None = None
        #: set when the run ended without waiting for this tracker: it warns no more
        self.abandoned = False
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"mtlkit-tracker-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        self._guard(self._open)
        while True:
            item = self.queue.get()
            if item is None:
                return
            method, args = item
            if self.tracker is not None and self.error is None:
                self._guard(getattr(self.tracker, method), *args)

    def _open(self) -> None:
        self.tracker = self.factory()

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - a tracker never stops training
            if self.error is not None or self.abandoned:  # already reported: one warning per tracker
                return
            self.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            warnings.warn(f"mtlkit: tracker {self.name} failed ({self.error}); training goes on without it",
                          RuntimeWarning, stacklevel=1)

    def call(self, method: str, *args: Any) -> None:
        if self.error is None:
            self.queue.put((method, args))

    def close(self, deadline: float, waited: float) -> None:
        """Wait for the queue to drain until ``deadline`` (``time.monotonic()``); then leave the thread behind."""
        self.queue.put(None)
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            self.abandoned = True
            if self.error is None:
                self.error = f"still sending after {waited:g} s at the end of the run"
                warnings.warn(f"mtlkit: tracker {self.name} {self.error} (server unreachable?); left behind",
                              RuntimeWarning, stacklevel=1)


class Trackers:
    """The trackers of one run: each opened and called on its own thread; every call returns at once."""

    def __init__(self, factories: dict[str, Callable[[], Tracker]] | None = None,
                 close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.workers: list[_Worker] = []
        self.close_timeout = close_timeout
        self.closed = False
        self.add(factories or {})

    def add(self, factories: dict[str, Callable[[], Tracker]]) -> None:
        """Open more trackers (each on its own thread)."""
        self.workers += [_Worker(name, factory) for name, factory in factories.items()]

    @property
    def names(self) -> list[str]:
        """The trackers' names, in order."""
        return [w.name for w in self.workers]

    @property
    def errors(self) -> dict[str, str]:
        """Trackers that failed: name -> first line of their error."""
        return {w.name: w.error for w in self.workers if w.error is not None}

    def log_params(self, params: dict[str, Any]) -> None:
        """Queue the resolved config for every tracker."""
        for w in self.workers:
            w.call("log_params", params)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Queue one epoch record for every tracker."""
        for w in self.workers:
            w.call("log_epoch", record)

    def log_artifact(self, path: Path) -> None:
        """Queue a file for every tracker (missing files are skipped)."""
        if Path(path).is_file():
            for w in self.workers:
                w.call("log_artifact", Path(path))

    def finish(self, status: str) -> None:
        """Queue the final status, then wait at most ``close_timeout`` s in all for the queues to drain."""
        if self.closed:
            return
        self.closed = True
        for w in self.workers:
            w.call("finish", status)
        deadline = time.monotonic() + self.close_timeout
        for w in self.workers:
            w.close(deadline, self.close_timeout)
