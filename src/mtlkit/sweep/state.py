"""A sweep's state on disk: ``sweep.json`` (one record per run), its locks, and what a run folder holds.

Two locks, two jobs:

* ``sweep.lock`` (the driver's pid): one ``mtlkit sweep`` process drives a sweep folder at a time.
* ``sweep.json.lock`` (``flock``): every writer of ``sweep.json`` (the driver, and the workers that
  run the runs: local processes, Ray tasks, SLURM jobs on a shared file system) reads, changes one
  record and rewrites the file atomically while holding it, so updates from many processes never
  overwrite each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.io import atomic_write_json, pid_alive

#: run statuses recorded in sweep.json
STATUSES = ("pending", "running", "finished", "failed", "interrupted")


def now() -> str:
    """The current UTC time, as the records store it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_status(run_dir: Path) -> str:
    """``finished`` (results.json says so), ``resumable`` (checkpoints/last.pt), ``empty`` or ``absent``."""
    if not run_dir.is_dir():
        return "absent"
    results = run_dir / "results.json"
    if results.is_file():
        try:
            if json.loads(results.read_text()).get("status") == "finished":
                return "finished"
        except (OSError, json.JSONDecodeError):
            pass
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "resumable"
    return "empty"


def read_state(sweep_dir: Path) -> dict[str, Any] | None:
    """The parsed ``sweep.json`` of a sweep folder, or None when there is none yet."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg}); delete it to start a new record") from None


@contextmanager
def state_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold the ``flock`` on ``sweep.json.lock`` (blocks until free; released when the holder dies)."""
    path = Path(sweep_dir) / "sweep.json.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``sweep.json`` with ``state`` (under the state lock)."""
    with state_lock(sweep_dir):
        state["updated"] = now()
        atomic_write_json(Path(sweep_dir) / "sweep.json", state)


def run_record(sweep_dir: Path, name: str) -> dict[str, Any]:
    """Run ``name``'s record in ``sweep.json`` as it is now (read without the lock)."""
    return _state_and_run(Path(sweep_dir), name)[1]


def _state_and_run(sweep_dir: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``sweep.json`` and run ``name``'s record in it; a missing file or run is an MtlkitError."""
    state = read_state(sweep_dir)
    if state is None:
        raise MtlkitError(f"{sweep_dir}: no sweep.json (the run {name!r} was not started by mtlkit sweep)")
    rec: dict[str, Any] | None = next((r for r in state["runs"] if r["name"] == name), None)
    if rec is None:
        raise MtlkitError(f"{sweep_dir / 'sweep.json'}: no run named {name!r}")
    return state, rec


def update_run(sweep_dir: Path, name: str, **fields: Any) -> dict[str, Any]:
    """Set ``fields`` on run ``name``'s record in ``sweep.json`` (read-modify-write under the lock); the record.

    ``attempts_add=1`` increments the attempt count, ``wall_time_add=s`` adds to the wall time.
    """
    sweep_dir = Path(sweep_dir)
    with state_lock(sweep_dir):
        state, rec = _state_and_run(sweep_dir, name)
        rec["attempts"] = rec.get("attempts", 0) + fields.pop("attempts_add", 0)
        rec["wall_time"] = rec.get("wall_time", 0.0) + fields.pop("wall_time_add", 0.0)
        rec.update(fields)
        state["updated"] = now()
        atomic_write_json(sweep_dir / "sweep.json", state)
        return dict(rec)


@contextmanager
def driver_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``sweep.lock`` (our pid) so two processes never drive the same sweep folder at once."""
    path = Path(sweep_dir) / "sweep.lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid, host = _lock_owner(path)
            if pid and pid != os.getpid() and host == socket.gethostname() and pid_alive(pid):
                raise MtlkitError(f"{sweep_dir}: sweep is being run by process {pid} (sweep.lock)") from None
            if pid and host != socket.gethostname():
                raise MtlkitError(
                    f"{sweep_dir}: sweep is being run by process {pid} on {host} (sweep.lock); "
                    "delete sweep.lock if that process is gone"
                ) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}")
        break
    else:
        raise MtlkitError(f"{sweep_dir}: could not take sweep.lock (another process keeps recreating it)")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_owner(path: Path) -> tuple[int, str]:
    """``(pid, host)`` written in a ``sweep.lock`` (a bare pid means this host)."""
    try:
        parts = path.read_text().split()
    except OSError:
        return 0, ""
    try:
        pid = int(parts[0]) if parts else 0
    except ValueError:
        return 0, ""
    return pid, parts[1] if len(parts) > 1 else socket.gethostname()


def driver_alive(sweep_dir: Path) -> bool:
    """Whether a live process holds the sweep's ``sweep.lock`` (a lock from another host counts as live)."""
    path = Path(sweep_dir) / "sweep.lock"
    if not path.is_file():
        return False
    pid, host = _lock_owner(path)
    return bool(pid) and (host != socket.gethostname() or pid_alive(pid))


def worker_alive(rec: dict[str, Any], run_dir: Path) -> str | None:
    """Who still trains a run an earlier driver started (``"process 12 on host"``, ``"SLURM job 7"``), or None.

    A worker holds its run folder's run lock (``.lock``, an ``flock`` the kernel drops when the
    worker dies) while it trains; before it takes it (still importing), its ``running`` record's
    pid on this host, or its SLURM job while ``squeue`` lists it, shows it is alive. An orphaned
    worker of a killed driver goes on; the next driver waits for it instead of starting a second.
    """
    from mtlkit.train.rundir import lock_owner

    owner = lock_owner(run_dir)
    if owner is not None:
        return owner
    if rec.get("status") != "running":
        return None
    where = rec.get("where") or {}
    pid, host = where.get("pid"), where.get("host")
    if pid and host == socket.gethostname() and pid != os.getpid() and pid_alive(int(pid)):
        return f"process {pid} on {host}"
    job_id = where.get("job_id")
    if job_id and where.get("executor") == "slurm" and _slurm_job_listed(str(job_id)):
        return f"SLURM job {job_id}"
    return None


def _slurm_job_listed(job_id: str) -> bool:
    """Whether ``squeue`` lists the job (pending or running); False where there is no ``squeue``."""
    import shutil
    import subprocess

    if shutil.which("squeue") is None:
        return False
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def record_is_stale(rec: dict[str, Any]) -> bool:
    """A ``running`` record whose process is known to be gone (same host, dead pid)."""
    where = rec.get("where") or {}
    pid, host = where.get("pid"), where.get("host")
    return (
        rec.get("status") == "running"
        and pid is not None
        and bool(pid)
        and host == socket.gethostname()
        and not pid_alive(pid)
    )


def status_lines(state: dict[str, Any], sweep_dir: Path) -> list[str]:
    """One line per run for ``mtlkit sweep --status``: pending, running where, finished, failed with the error."""
    runs = state.get("runs", [])
    width = max((len(r["name"]) for r in runs), default=4)
    counts = {s: 0 for s in STATUSES}
    lines = []
    for rec in runs:
        status = rec.get("status", "pending")
        if status == "running" and record_is_stale(rec):
            status = "interrupted"
        counts[status] = counts.get(status, 0) + 1
        if status == "running":
            detail = f"on {describe_where(rec.get('where'))} since {rec.get('started', '?')}"
        elif status == "finished":
            detail = f"in {_duration(rec.get('wall_time', 0.0))}"
            if run_status(Path(sweep_dir) / rec.get("run_dir", rec["name"])) != "finished":
                detail += " (but results.json is missing now)"
        elif status == "failed":
            detail = (rec.get("error") or "").splitlines()[0] if rec.get("error") else "(no error recorded)"
        elif status == "interrupted":
            detail = f"stopped after attempt {rec.get('attempts', 0)}; the next sweep resumes it"
        else:
            detail = ""
        tries = f" attempts {rec['attempts']}" if rec.get("attempts", 0) > 1 else ""
        lines.append(f"  {rec['name']:<{width}}  {status:<11} {detail}{tries}".rstrip())
    driver = "a driver is running" if driver_alive(sweep_dir) else "no driver running"
    head = (
        f"sweep {state.get('name', Path(sweep_dir).name)}: {len(runs)} runs, "
        + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
        + f" ({driver})"
    )
    return [head, *lines]


def describe_where(where: dict[str, Any] | None) -> str:
    """A record's ``where`` (executor, host, pid, job id, GPU or threads) as a short phrase."""
    if not where:
        return "?"
    parts = [where.get("executor", "?"), str(where.get("host", "?"))]
    if where.get("node"):
        parts.append(f"node {where['node']}")
    if where.get("job_id"):
        parts.append(f"job {where['job_id']}")
    if where.get("pid"):
        parts.append(f"pid {where['pid']}")
    if where.get("gpus"):
        parts.append(f"GPU {where['gpus']}")
    elif where.get("threads"):
        parts.append(f"{where['threads']} thread{'s' if where['threads'] != 1 else ''}")
    return " ".join(parts)


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
