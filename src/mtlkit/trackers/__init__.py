"""Experiment trackers a run logs to: ``train.loggers: [tensorboard, mlflow, wandb]`` (tensorboard default).

Each tracker is one module with a small common interface (:class:`Tracker`: ``log_params``,
``log_epoch``, ``log_artifact``, ``finish``). :func:`open_trackers` builds a run's
:class:`Trackers`: each tracker on its own thread, so it never slows training, and one that fails
warns once and is dropped. MLflow and W&B need the extra ``pip install 'mtlkit[trackers]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.trackers.base import FINAL_STATUSES, Tracker, Trackers, epoch_scalars, flatten

#: tracker name -> (module, class, the package it imports, the extra that installs it)
TRACKERS: dict[str, tuple[str, str, str | None, str | None]] = {
    "tensorboard": ("mtlkit.trackers.tensorboard", "TensorBoardTracker", None, None),
    "mlflow": ("mtlkit.trackers.mlflow", "MlflowTracker", "mlflow", "trackers"),
    "wandb": ("mtlkit.trackers.wandb", "WandbTracker", "wandb", "trackers"),
}


def check_loggers(names: list[str], options: dict[str, Any]) -> None:
    """Refuse unknown tracker names and trackers whose package is missing, in one line naming the extra."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"train.loggers: unknown tracker {name!r} (choose from {', '.join(TRACKERS)})")
        package, extra = TRACKERS[name][2], TRACKERS[name][3]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.loggers: {name} needs {package}: pip install 'mtlkit[{extra}]'")
    for name in options:
        if name not in TRACKERS:
            raise ConfigError(f"train.tracker_options: unknown tracker {name!r} (choose from {', '.join(TRACKERS)})")


def factory(name: str, run_path: Path, options: dict[str, Any]) -> Callable[[], Tracker]:
    """A function that opens tracker ``name`` for the run folder (called on the tracker's thread)."""
    module, cls, _, _ = TRACKERS[name]

    def make() -> Tracker:
        return getattr(importlib.import_module(module), cls)(run_path, dict(options))

    return make


def tracker_factories(cfg: Any, run_path: Path) -> dict[str, Callable[[], Tracker]]:
    """Openers of the trackers ``cfg.train.loggers`` names for ``run_path`` (no tensorboard when train.tensorboard
    is off)."""
    names = [n for n in dict.fromkeys(cfg.train.loggers) if n != "tensorboard" or cfg.train.tensorboard]
    options = cfg.train.tracker_options
    check_loggers(names, options)
    return {n: factory(n, Path(run_path), options.get(n, {})) for n in names}


def open_trackers(cfg: Any, run_path: Path) -> Trackers:
    """The trackers ``cfg.train.loggers`` names, opened for ``run_path``."""
    return Trackers(tracker_factories(cfg, run_path))


@contextmanager
def tracking() -> Iterator[Trackers]:
    """An empty tracker set for a run (the trainer adds the trackers once its folder is claimed), closed with
    the run's status: ``finished``, ``killed`` (interrupt, exit) or ``failed`` (an exception)."""
    trackers = Trackers()
    try:
        yield trackers
    except (KeyboardInterrupt, SystemExit):
        trackers.finish("killed")
        raise
    except BaseException:
        trackers.finish("failed")
        raise
    trackers.finish("finished")


def log_run_files(trackers: Trackers, run_path: Path) -> None:
    """Send a finished run's files as artifacts: results.json, config.yaml, metrics.jsonl, figures under extras/."""
    run_path = Path(run_path)
    for name in ("results.json", "config.yaml", "metrics.jsonl"):
        trackers.log_artifact(run_path / name)
    for fig in sorted((run_path / "extras").rglob("*")) if (run_path / "extras").is_dir() else []:
        if fig.suffix.lower() in (".png", ".svg", ".pdf", ".html", ".json"):
            trackers.log_artifact(fig)


__all__ = ["FINAL_STATUSES", "TRACKERS", "Tracker", "Trackers", "check_loggers", "epoch_scalars", "flatten",
           "log_run_files", "open_trackers", "tracker_factories", "tracking"]
