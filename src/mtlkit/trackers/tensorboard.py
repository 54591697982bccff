"""TensorBoard: event files under ``<run>/tb`` (the default tracker; no extra needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtlkit.records import EpochRecord
from mtlkit.trackers.base import epoch_scalars
from mtlkit.train.logging import Logger


class TensorBoardTracker(Logger):
    """Scalars ``train/<key>``, ``val/<key>``, ``weights/<task>``, ``lr`` per epoch; the config as text."""

    name = "tensorboard"

    def __init__(self, run_path: Path, options: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_path) / "tb"))

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config as a YAML text summary."""
        self.writer.add_text("config", "```\n" + yaml.safe_dump(params, sort_keys=False) + "```")

    def log_epoch(self, record: EpochRecord) -> None:
        """Every number of the epoch at step = epoch."""
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def log_artifact(self, path: Path) -> None:
        """Nothing: the files already sit in the run folder beside ``tb/``."""

    def finish(self, status: str) -> None:
        """Close the event file."""
        self.writer.close()
