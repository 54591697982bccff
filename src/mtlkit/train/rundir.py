"""The run folder: resolved config, per-epoch metrics, results with provenance."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
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
from mtlkit.io import atomic_write_json, atomic_write_text, json_safe, output_error, remove_stale_temp_files, to_json
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


#: the run lock's file in a run folder: ``flock``-ed by the process training the run, ``pid host`` inside
LOCK_NAME = ".lock"
#: run folders this process holds the lock of -> the locked file descriptor
_HELD: dict[Path, int] = {}
#: the locks taken inside the innermost :func:`run_locks` block (released when it ends)
_LOCKS: ContextVar[list[Path] | None] = ContextVar("mtlkit_run_locks", default=None)


def lock_owner(run_dir: Path) -> str | None:
    """``"process PID on HOST"`` when a live process holds ``run_dir``'s run lock, else None.

    The lock is an ``flock``, which the kernel drops when its holder dies (kill -9 included), so
    a held lock always means a live trainer, also one on another node of a shared file system.
    """
    path = Path(run_dir) / LOCK_NAME
    if Path(run_dir).resolve() in _HELD:
        return f"process {os.getpid()} on {socket.gethostname()}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _owner_text(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _owner_text(path: Path) -> str:
    """What a lock file says about its holder: ``process PID on HOST``."""
    try:
        pid, host = (path.read_text().split() + ["?", "?"])[:2]
    except OSError:
        pid, host = "?", "?"
    return f"process {pid} on {host}"


def lock_run_dir(run_dir: Path) -> None:
    """Take ``run_dir``'s run lock for the rest of the enclosing :func:`run_locks` block (else the process).

    A run folder another live process trains is a one-line OutputError naming that process: two
    processes never write one run's checkpoints and records. Taking a lock this process holds is a no-op.
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD:
        return
    _mkdir(run_dir, parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise output_error(path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{run_dir}: this run is being trained by {_owner_text(path)} ({LOCK_NAME} is "
                "held); wait for it to end or stop it, then `mtlkit train --resume` it"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # the file we locked is still the lock (its last holder did not remove it meanwhile)
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    _HELD[key] = fd
    held = _LOCKS.get()
    if held is not None:
        held.append(key)


def unlock_run_dir(run_dir: Path) -> None:
    """Release ``run_dir``'s run lock if this process holds it, removing the lock file (while locked,
    so a process that opened it meanwhile sees it is gone and retries; a killed holder leaves it
    behind, unlocked, for the next trainer to take)."""
    key = Path(run_dir).resolve()
    fd = _HELD.pop(key, None)
    if fd is not None:
        (key / LOCK_NAME).unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def run_locks() -> Iterator[None]:
    """Release the run locks taken inside this block when it ends (a training call's lifetime)."""
    held: list[Path] = []
    token = _LOCKS.set(held)
    try:
        yield
    finally:
        _LOCKS.reset(token)
        for key in reversed(held):
            unlock_run_dir(key)


#: files whose presence means a run folder holds (part of) a run that trained
RUN_RECORDS = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "results.json")


def check_new_run_dir(run_dir: Path, cfg: Config) -> None:
    """Refuse to start a new run in ``run_dir`` when it holds one (``--run-dir`` / ``fit(run_dir=)``).

    Any record of a run that trained (a checkpoint, metrics, results) or another config's
    ``config.yaml`` is refused, naming ``--resume``: a new run never continues, or overwrites,
    what an earlier one wrote. A folder with only this config's ``config.yaml`` (a run killed
    before its first epoch ended, a failed sweep run's retry) starts again.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise OutputError(f"{run_dir}: is a file, not a run folder")
    results = read_results_safely(run_dir)
    if results is not None and results.get("status") == "finished":
        raise ConfigError(
            f"{run_dir}: holds a finished run (results.json); a finished run is never overwritten: "
            "give --run-dir a new folder"
        )
    found = [name for name in RUN_RECORDS if (run_dir / name).is_file() and name != "results.json"]
    if found:
        raise ConfigError(
            f"{run_dir}: holds a run ({', '.join(found)}); continue it with `mtlkit train --resume "
            f"{run_dir}`, or give --run-dir a new folder"
        )
    saved = run_dir / "config.yaml"
    if saved.is_file():
        from mtlkit.config import load_config

        try:
            same = load_config(saved).hash() == cfg.hash()
        except MtlkitError:
            same = False
        if not same:
            raise ConfigError(
                f"{run_dir}: holds another run's config.yaml; give --run-dir a new folder (or "
                f"`mtlkit train --resume {run_dir}` to run that config)"
            )


def read_results_safely(run_dir: Path) -> dict[str, Any] | None:
    """results.json as a dict, or None when it is absent or unreadable (not JSON, not an object)."""
    try:
        return read_results(run_dir)
    except (OSError, ConfigError):
        return None


def clean_interrupted_writes(run_dir: Path) -> list[Path]:
    """Delete the temp files of atomic writes a killed run left (``.last.pt.*.tmp``, ...); under the run lock."""
    return [p for folder in (run_dir, run_dir / "checkpoints") for p in remove_stale_temp_files(folder)]


#: the run folder opened inside the innermost :func:`failures_recorded` block (with its config)
_OPENED: ContextVar[list[tuple[Path, Config]] | None] = ContextVar("mtlkit_opened_run", default=None)


def open_run_dir(path: Path | None, cfg: Config, resume: bool = False) -> Path:
    """The run folder, locked and laid out: a newly claimed one when ``path`` is None, else ``path``.

    ``resume``: ``path`` holds the run being continued; otherwise it must not hold a run
    (:func:`check_new_run_dir`, checked again under the lock). Call it once everything that can be
    checked up front was checked, so a bad config or dataset leaves no folder behind. Inside
    :func:`failures_recorded`, a later failure is recorded in it.
    """
    path = new_run_dir(cfg) if path is None else Path(path)
    lock_run_dir(path)
    if not resume:
        check_new_run_dir(path, cfg)
    clean_interrupted_writes(path)
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
        "name": cfg.name,
        "arch": cfg.model.arch,
        "weighting": cfg.weighting.name,
        "dataset": cfg.dataset.name,
        "status": "failed",
        "error": failure_reason(err),
        "epochs": cfg.train.epochs,
        "epochs_done": epochs_done,
        "config_hash": cfg.hash(),
        **provenance(),
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
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "device": device,
            "cpus": torch.get_num_threads(),
        },
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
