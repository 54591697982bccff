"""The run folder: resolved config, per-epoch metrics, results with provenance."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

import mtlkit
from mtlkit.config import Config, save_config
from mtlkit.errors import ConfigError, MtlkitError, OutputError
from mtlkit.io import atomic_write_json, atomic_write_text, json_safe, output_error, to_json
from mtlkit.readers import read_text
from mtlkit.train import distributed as dist

#: suffixes tried after ``<name>-<timestamp>`` before giving up (runs started in the same second)
MAX_SUFFIX = 10_000


def claim_run_dir(out_dir: str | Path, name: str, stamp: str | None = None) -> Path:
    """Create and return a new folder ``<out_dir>/<name>-<stamp>`` (``-1``, ``-2``... if taken).

    The folder is created exclusively (``mkdir`` fails if it exists), so processes started in the
    same second with the same name (parallel sweeps, cluster arrays) each get their own folder.
    ``stamp`` defaults to the current local time as ``YYYYmmdd-HHMMSS``.
    """
    out = Path(out_dir)
    _mkdir(out, parents=True, exist_ok=True)
    base = f"{name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(MAX_SUFFIX):
        path = out / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        except OSError as err:
            raise output_error(path, err) from None
        return path
    raise OutputError(f"{out / base}: {MAX_SUFFIX} run folders of this name and second exist already")


def _mkdir(path: Path, **kwargs: bool) -> None:
    """``path.mkdir(**kwargs)``; an OS error is a one-line OutputError naming the path."""
    try:
        path.mkdir(**kwargs)
    except OSError as err:
        raise output_error(path, err) from None


def new_run_dir(cfg: Config) -> Path:
    """Claim a new run folder ``<out_dir>/<name>-<YYYYmmdd-HHMMSS>`` for ``cfg`` (see :func:`claim_run_dir`)."""
    return claim_run_dir(cfg.out_dir, cfg.name)


def prepare_run_dir(path: Path, cfg: Config) -> None:
    """Create the folder layout and write the resolved config."""
    _mkdir(path / "checkpoints", parents=True, exist_ok=True)
    save_config(cfg, path / "config.yaml")


#: the run folder opened inside the innermost :func:`failures_recorded` block (with its config)
_OPENED: ContextVar[list[tuple[Path, Config]] | None] = ContextVar("mtlkit_opened_run", default=None)


def open_run_dir(path: Path | None, cfg: Config) -> Path:
    """The run folder, laid out: a newly claimed one when ``path`` is None, else ``path`` (resume, --run-dir).

    Call it once everything that can be checked up front was checked, so a bad config or dataset
    leaves no folder behind. Inside :func:`failures_recorded`, a later failure is recorded in it.
    """
    path = new_run_dir(cfg) if path is None else Path(path)
    prepare_run_dir(path, cfg)
    opened = _OPENED.get()
    if opened is not None:
        opened.append((path, cfg))
    return path


@contextmanager
def failures_recorded() -> Iterator[None]:
    """A run that fails (any exception but an interrupt) after :func:`open_run_dir` gets a results.json
    with ``status: failed`` and the one-line reason, so reports and sweeps show why; the error goes on."""
    opened: list[tuple[Path, Config]] = []
    token = _OPENED.set(opened)
    try:
        yield
    except Exception as err:
        if opened and dist.is_main():
            record_failure(*opened[-1], err)
        raise
    finally:
        _OPENED.reset(token)


def failure_reason(err: BaseException) -> str:
    """The one-line reason of a failure: an mtlkit error's message, else the exception's type and first line."""
    text = str(err).strip()
    if not isinstance(err, MtlkitError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text.splitlines()[0][:1000] if text else type(err).__name__


def record_failure(path: Path, cfg: Config, err: BaseException) -> None:
    """Write results.json with ``status: failed`` and the reason (best effort: never hides ``err``)."""
    try:
        epochs_done = len(read_history(path))
    except Exception:  # noqa: BLE001 - an unreadable log does not stop the failure being recorded
        epochs_done = None
    results = {
        "name": cfg.name, "arch": cfg.model.arch, "weighting": cfg.weighting.name, "dataset": cfg.dataset.name,
        "status": "failed", "error": failure_reason(err), "epochs": cfg.train.epochs,
        "epochs_done": epochs_done, "config_hash": cfg.hash(), **provenance(),
    }
    try:
        write_results(path, results)
    except (MtlkitError, OSError):
        pass


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` with one JSON object per finished epoch (atomic)."""
    atomic_write_text(path / "metrics.jsonl", "".join(history_line(r) + "\n" for r in history))


def history_line(record: dict[str, Any]) -> str:
    """One strict-JSON line of ``metrics.jsonl``: a NaN/inf value is null and listed under ``non_finite``."""
    clean, bad = json_safe(record)
    if bad:
        clean["non_finite"] = bad
    return to_json(clean)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The epoch objects of ``path/metrics.jsonl`` (none without one); a bad line is a ConfigError naming it."""
    file = path / "metrics.jsonl"
    if not file.is_file():
        return []
    out = []
    for i, line in enumerate(read_text(file).splitlines()):
        if line.strip():
            out.append(_json_object(line, f"{file}: line {i + 1}"))
    return out


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
    """``path/results.json`` (None without one); not JSON, or not an object, is a ConfigError naming the file."""
    file = path / "results.json"
    return _json_object(read_text(file), str(file)) if file.is_file() else None


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: invalid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value
