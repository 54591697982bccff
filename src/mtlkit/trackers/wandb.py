"""Weights & Biases: one W&B run per mtlkit run, files under ``<run>/wandb``.

Options (``train.tracker_options.wandb``): ``project`` (default ``mtlkit``), ``entity``, ``group``,
``tags``, ``mode`` (``online``, ``offline``: sync later with ``wandb sync <run>/wandb/offline-run-*``;
default ``$WANDB_MODE``, else online), ``init_timeout`` (seconds W&B may take to start the run,
default 10: an unreachable server fails then, with one warning, instead of W&B's 90 s). A resumed
run continues the same W&B run (its id is kept in ``<run>/trackers.json``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from mtlkit.records import EpochRecord
from mtlkit.trackers.base import epoch_scalars
from mtlkit.trackers.ids import read_id, write_id
from mtlkit.train.logging import Logger

OPTIONS = ("project", "entity", "group", "tags", "mode", "init_timeout")
#: default of the ``init_timeout`` option (seconds)
INIT_TIMEOUT = 10.0


class WandbTracker(Logger):
    """Config as the run's config; metrics per epoch at step = epoch; files saved with the run; exit code."""

    name = "wandb"

    def __init__(self, run_path: Path, options: dict[str, Any]) -> None:
        unknown = [k for k in options if k not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} (allowed: {', '.join(OPTIONS)})")
        import wandb

        self.run_path = Path(run_path)
        run_id = read_id(self.run_path, self.name) or uuid.uuid4().hex[:8]
        write_id(self.run_path, self.name, run_id)
        mode: Any = options.get("mode") or os.environ.get("WANDB_MODE") or "online"  # W&B checks the value
        self.run = wandb.init(
            project=options.get("project", "mtlkit"),
            entity=options.get("entity"),
            group=options.get("group"),
            tags=options.get("tags"),
            name=self.run_path.name,
            id=run_id,
            resume="allow",
            dir=str(self.run_path),
            mode=mode,
            settings=wandb.Settings(
                console="off",
                silent=True,
                x_disable_stats=True,
                init_timeout=float(options.get("init_timeout", INIT_TIMEOUT)),
            ),
        )

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config (nested) as the W&B run config."""
        self.run.config.update(params, allow_val_change=True)

    def log_epoch(self, record: EpochRecord) -> None:
        """Every number of the epoch at step = epoch."""
        self.run.log({**epoch_scalars(record), "epoch": record.epoch}, step=int(record.epoch))

    def log_artifact(self, path: Path) -> None:
        """Save the file with the run (copied into the run's files)."""
        path = Path(path).resolve()
        base = self.run_path.resolve() if path.is_relative_to(self.run_path.resolve()) else path.parent
        self.run.save(str(path), base_path=str(base), policy="now")

    def finish(self, status: str) -> None:
        """Close the run: exit code 0 when finished, 1 otherwise."""
        self.run.summary["mtlkit_status"] = status
        self.run.finish(exit_code=0 if status == "finished" else 1)
