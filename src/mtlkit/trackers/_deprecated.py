"""The old tracker names, kept for one release (each warns on use): the trackers are loggers now."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mtlkit.records import EpochRecord
from mtlkit.trackers import LOGGERS, config_loggers, logger_names, opener
from mtlkit.train.logging import CLOSE_TIMEOUT, Background, Logger, Loggers, run_files, run_logging


class Tracker(Logger):
    """The old tracker base: a :class:`Logger` whose subclasses' ``log_epoch`` receive the record as a dict."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("log_epoch")
        if own is not None:

            def log_epoch(self: Logger, record: Any) -> None:
                own(self, record.to_dict() if isinstance(record, EpochRecord) else record)

            cls.log_epoch = log_epoch  # type: ignore[method-assign]


class _Trackers(Loggers):
    """The old ``Trackers``: background loggers made from ``{name: opener}``; records may be metrics.jsonl dicts."""

    def __init__(
        self, factories: Mapping[str, Callable[[], Logger]] | None = None, close_timeout: float = CLOSE_TIMEOUT
    ) -> None:
        super().__init__([Background(n, f) for n, f in (factories or {}).items()], close_timeout)

    def log_epoch(self, record: EpochRecord | Mapping[str, Any]) -> None:
        super().log_epoch(record if isinstance(record, EpochRecord) else EpochRecord.from_dict(record))


def _tracker_factories(cfg: Any, run_path: Path) -> dict[str, Callable[[], Logger]]:
    return {n: opener(n, Path(run_path), cfg.train.tracker_options.get(n, {})) for n in logger_names(cfg)}


def _open_trackers(cfg: Any, run_path: Path) -> Loggers:
    return Loggers(config_loggers(cfg, run_path))


def _tracking() -> AbstractContextManager[Loggers]:
    return run_logging()


def _log_run_files(trackers: Logger, run_path: Path) -> None:
    for path in run_files(run_path):
        trackers.log_artifact(path)


#: old name -> (what it is now, what to use instead)
NAMES: dict[str, tuple[Any, str]] = {
    "TRACKERS": (LOGGERS, "mtlkit.trackers.LOGGERS"),
    "Tracker": (Tracker, "mtlkit.train.logging.Logger (log_epoch receives an EpochRecord)"),
    "Trackers": (_Trackers, "mtlkit.train.logging.Loggers of mtlkit.trackers.open_loggers(...)"),
    "factory": (opener, "mtlkit.trackers.opener"),
    "tracker_factories": (_tracker_factories, "mtlkit.trackers.config_loggers"),
    "open_trackers": (_open_trackers, "mtlkit.trackers.config_loggers"),
    "tracking": (_tracking, "mtlkit.train.logging.run_logging"),
    "log_run_files": (_log_run_files, "mtlkit.train.logging.run_files"),
}
