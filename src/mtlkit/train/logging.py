"""Where a run reports to: one interface, :class:`Logger`, for the console, ``metrics.jsonl`` and the
loggers ``train.loggers`` names (:mod:`mtlkit.trackers`: tensorboard, mlflow, wandb).

A logger answers four calls, each optional (the base class ignores them): ``log_params(dict)``
(once, at the start: the resolved config), ``log_epoch(EpochRecord)`` (after every epoch),
``log_artifact(path)`` (the run's files once it finished: results.json, config.yaml,
metrics.jsonl, figures under extras/) and ``finish(status)`` (one of :data:`FINAL_STATUSES`).
The loop talks to one :class:`Loggers`, a list of them. A logger that talks to a server runs as a
:class:`Background`: opened and called on its own thread, so it never slows training; one that
raises warns once and is dropped for the rest of the run; the end of the run waits at most
:data:`CLOSE_TIMEOUT` s, for all of them together, for their last calls. Only rank 0 logs.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from mtlkit.records import EpochRecord
from mtlkit.tasks import Task
from mtlkit.train.rundir import write_history

#: the statuses a run ends with: ``finished``, ``failed`` (an exception), ``killed`` (interrupt, exit)
FINAL_STATUSES = ("finished", "failed", "killed")
#: seconds the end of a run waits, for all background loggers together, for their last calls (an
#: unreachable server costs at most this much, and one warning)
CLOSE_TIMEOUT = 5.0
#: the files under a run's ``extras/`` sent as artifacts
FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".html", ".json")


class Logger:
    """The one logger interface: every call is optional (this base ignores them), subclasses override the ones
    they use. A logger ``train.loggers`` can name is registered in :data:`mtlkit.trackers.LOGGERS`."""

    #: the name in ``train.loggers`` (registered loggers only)
    name: ClassVar[str] = ""

    def log_params(self, params: dict[str, Any]) -> None:
        """Record the run's settings (the resolved config, nested)."""

    def log_epoch(self, record: EpochRecord) -> None:
        """Record one finished epoch (the metrics.jsonl record: epoch, time, lr, train, val, weights)."""

    def log_artifact(self, path: Path) -> None:
        """Keep a file the run wrote (results.json, config.yaml, metrics.jsonl, a figure)."""

    def finish(self, status: str) -> None:
        """The run ended with ``status`` (one of :data:`FINAL_STATUSES`)."""


def ended_status(err: BaseException) -> str:
    """The final status of a run that ``err`` ended: ``killed`` for an interrupt or exit, else ``failed``."""
    return "killed" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"


def run_files(run_path: Path) -> list[Path]:
    """A finished run's files worth keeping, as artifacts: results.json, config.yaml, metrics.jsonl, then the
    figures under extras/ (those that exist)."""
    run_path = Path(run_path)
    files = [run_path / name for name in ("results.json", "config.yaml", "metrics.jsonl")]
    extras = run_path / "extras"
    if extras.is_dir():
        files += [f for f in sorted(extras.rglob("*")) if f.suffix.lower() in FIGURE_SUFFIXES]
    return [f for f in files if f.is_file()]


class ConsoleLogger(Logger):
    """One line per epoch: each task's training loss and main validation metric, the epoch's time."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def log_epoch(self, record: EpochRecord) -> None:
        tqdm.write(epoch_line(record, self.tasks))


def run_header(
    run_path: Path, arch: str, parameters: int, train_loader: Any, val_loader: Any, max_steps: int | None = None
) -> str:
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
    return (
        f"run folder: {run_path} | model: {arch}, {parameters / 1e6:.2f} M parameters | "
        f"data: {n_train if n_train is not None else '?'} train / {n_val if n_val is not None else '?'} val "
        f"samples, {steps if steps is not None else '?'} steps per epoch"
    )


def epoch_line(record: EpochRecord, tasks: list[Task]) -> str:
    """``epoch   3 | seg loss 1.234 miou 0.3 | ... | 4.2s``."""
    parts = [f"epoch {record.epoch:>3}"]
    for t in tasks:
        key = f"{t.name}/{t.main_metric}"
        if key in record.val:
            loss = record.train.get(f"loss/{t.name}", float("nan"))
            parts.append(f"{t.name} loss {loss:.3f} {t.main_metric} {record.val[key]:.4g}")
    return " | ".join(parts) + f" | {record.epoch_time:.1f}s"


class JsonlLogger(Logger):
    """``metrics.jsonl``: rewritten atomically with every epoch so far (a resume continues the file;
    non-finite values as the run folder's strict JSON writes them)."""

    def __init__(self, run_dir: Path, history: list[EpochRecord] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.history = list(history or [])

    def log_epoch(self, record: EpochRecord) -> None:
        self.history.append(record)
        write_history(self.path.parent, [r.to_dict() for r in self.history])


class Background(Logger):
    """A logger opened and called on its own daemon thread: every call returns at once.

    ``opener`` makes the logger (on the thread, so a slow server never delays the run's start). The
    first exception, opening or in a call, disables it with one warning; training goes on.
    :meth:`close` waits for its queue to drain until a deadline, then leaves the thread behind.
    """

    def __init__(self, name: str, opener: Callable[[], Logger]) -> None:
        self.label = name
        self.opener = opener
        self.logger: Logger | None = None
        #: first line of the error that disabled it
        self.error: str | None = None
        #: set when the run ended without waiting for this logger: it warns no more
        self.abandoned = False
        self.closed = False
        self.queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"mtlkit-tracker-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        self._guard(self._open)
        while True:
            item = self.queue.get()
            if item is None:
                return
            method, args = item
            if self.logger is not None and self.error is None:
                self._guard(getattr(self.logger, method), *args)

    def _open(self) -> None:
        self.logger = self.opener()

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - a logger never stops training
            if self.error is not None or self.abandoned:  # already reported: one warning per logger
                return
            self.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            warnings.warn(
                f"mtlkit: tracker {self.label} failed ({self.error}); training goes on without it",
                RuntimeWarning,
                stacklevel=1,
            )

    def _call(self, method: str, *args: Any) -> None:
        if self.error is None and not self.closed:
            self.queue.put((method, args))

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", params)

    def log_epoch(self, record: EpochRecord) -> None:
        self._call("log_epoch", record)

    def log_artifact(self, path: Path) -> None:
        """Queue the file (a missing one is skipped)."""
        if Path(path).is_file():
            self._call("log_artifact", Path(path))

    def finish(self, status: str) -> None:
        """Queue the final status (:meth:`close` then waits for it)."""
        self._call("finish", status)

    def close(self, deadline: float, waited: float) -> None:
        """Wait for the queue to drain until ``deadline`` (``time.monotonic()``); then leave the thread behind."""
        if self.closed:
            return
        self.closed = True
        self.queue.put(None)
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            self.abandoned = True
            if self.error is None:
                self.error = f"still sending after {waited:g} s at the end of the run"
                warnings.warn(
                    f"mtlkit: tracker {self.label} {self.error} (server unreachable?); left behind",
                    RuntimeWarning,
                    stacklevel=1,
                )


class Loggers(Logger):
    """Several loggers as one: each call goes to every logger in order. :meth:`finish` is answered once; it
    then waits at most ``close_timeout`` s in all for the :class:`Background` ones to send their last calls."""

    def __init__(self, loggers: list[Logger] | None = None, close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.loggers = list(loggers or [])
        self.close_timeout = close_timeout
        self.closed = False

    def add(self, *loggers: Logger) -> None:
        """More loggers (after those there)."""
        self.loggers += loggers

    def background(self) -> list[Background]:
        """The background loggers, here and in nested sets."""
        out: list[Background] = []
        for lg in self.loggers:
            out += [lg] if isinstance(lg, Background) else lg.background() if isinstance(lg, Loggers) else []
        return out

    @property
    def errors(self) -> dict[str, str]:
        """Background loggers that failed: name -> first line of their error."""
        return {b.label: b.error for b in self.background() if b.error is not None}

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
        if self.closed:
            return
        self.closed = True
        for lg in self.loggers:
            lg.finish(status)
        deadline = time.monotonic() + self.close_timeout
        for b in self.background():
            b.close(deadline, self.close_timeout)


@contextmanager
def run_logging(loggers: Loggers | None = None) -> Iterator[Loggers]:
    """The run's loggers (an empty set to add to by default), finished with the block's outcome: ``finished``,
    ``killed`` (an interrupt, an exit) or ``failed`` (an exception), unless the loop finished them first."""
    logs = loggers if loggers is not None else Loggers()
    try:
        yield logs
    except BaseException as err:
        logs.finish(ended_status(err))
        raise
    logs.finish("finished")


class _TrackersLogger(Logger):
    """Deprecated: the trackers are loggers now (:class:`Loggers`). Forwards the calls to ``trackers``
    and sends the run's files once it finished; the trackers are closed by whoever opened them."""

    def __init__(self, trackers: Any, run_dir: Path) -> None:
        self.trackers, self.run_dir = trackers, Path(run_dir)

    def log_params(self, params: dict[str, Any]) -> None:
        self.trackers.log_params(params)

    def log_epoch(self, record: EpochRecord) -> None:
        self.trackers.log_epoch(record)

    def finish(self, status: str) -> None:
        if status == "finished":
            for path in run_files(self.run_dir):
                self.trackers.log_artifact(path)


#: the old names -> (what they are now, what to use instead)
_DEPRECATED = {
    "BaseLogger": (Logger, "mtlkit.train.logging.Logger"),
    "TrackersLogger": (_TrackersLogger, "the named loggers themselves (mtlkit.trackers.open_loggers)"),
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        obj, instead = _DEPRECATED[name]
        warnings.warn(
            f"mtlkit.train.logging.{name} is deprecated and goes in the next release: use {instead}",
            DeprecationWarning,
            stacklevel=2,
        )
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
