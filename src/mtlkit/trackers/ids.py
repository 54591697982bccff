"""The tracked-run ids of a run folder (``trackers.json``), so a resumed run continues the same tracked run."""

from __future__ import annotations

import json
from pathlib import Path

from mtlkit.io import atomic_write_json


def read_id(run_path: Path, tracker: str) -> str | None:
    """The id ``tracker`` stored for this run folder, if any."""
    path = Path(run_path) / "trackers.json"
    try:
        return json.loads(path.read_text()).get(tracker)
    except (OSError, json.JSONDecodeError):
        return None


def write_id(run_path: Path, tracker: str, run_id: str) -> None:
    """Remember ``tracker``'s id for this run folder."""
    path = Path(run_path) / "trackers.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    data[tracker] = run_id
    atomic_write_json(path, data)
