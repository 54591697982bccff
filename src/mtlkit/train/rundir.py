"""The run folder: resolved config, per-epoch metrics, results with provenance."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import mtlkit
from mtlkit.config import Config, save_config
from mtlkit.io import atomic_write_json, atomic_write_text

#: suffixes tried after ``<name>-<timestamp>`` before giving up (runs started in the same second)
MAX_SUFFIX = 10_000


def claim_run_dir(out_dir: str | Path, name: str, stamp: str | None = None) -> Path:
    """Create and return a new folder ``<out_dir>/<name>-<stamp>`` (``-1``, ``-2``... if taken).

    The folder is created exclusively (``mkdir`` fails if it exists), so processes started in the
    same second with the same name (parallel sweeps, cluster arrays) each get their own folder.
    ``stamp`` defaults to the current local time as ``YYYYmmdd-HHMMSS``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(MAX_SUFFIX):
        path = out / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{out / base}: {MAX_SUFFIX} run folders of this name and second exist already")


def new_run_dir(cfg: Config) -> Path:
    """Claim a new run folder ``<out_dir>/<name>-<YYYYmmdd-HHMMSS>`` for ``cfg`` (see :func:`claim_run_dir`)."""
    return claim_run_dir(cfg.out_dir, cfg.name)


def prepare_run_dir(path: Path, cfg: Config) -> None:
    """Create the folder layout and write the resolved config."""
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, path / "config.yaml")


def open_run_dir(path: Path | None, cfg: Config) -> Path:
    """The run folder, laid out: a newly claimed one when ``path`` is None, else ``path`` (resume, --run-dir)."""
    path = new_run_dir(cfg) if path is None else Path(path)
    prepare_run_dir(path, cfg)
    return path


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` with one JSON object per finished epoch (atomic)."""
    atomic_write_text(path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def read_history(path: Path) -> list[dict[str, Any]]:
    file = path / "metrics.jsonl"
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def git_commit() -> str | None:
    """The commit of the mtlkit source tree, if it is a git checkout."""
    src = Path(mtlkit.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Versions, commit and machine, stored in every results.json."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "mtlkit": mtlkit.__version__},
        "git_commit": git_commit(),
        "machine": {"host": platform.node(), "platform": platform.platform(), "device": device,
                    "cpus": torch.get_num_threads()},
    }


def write_results(path: Path, results: dict[str, Any]) -> None:
    atomic_write_json(path / "results.json", results)


def read_results(path: Path) -> dict[str, Any] | None:
    file = path / "results.json"
    return json.loads(file.read_text()) if file.is_file() else None
