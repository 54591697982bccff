"""Checkpoints: written atomically every epoch, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtlkit.errors import TrainingError
from mtlkit.io import atomic_torch_save


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temp file + rename (a kill never leaves half a file)."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain Python only); a bad file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling/IO failure is reported the same way
        raise TrainingError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
