"""Which workers of an earlier sweep driver are alive: the run lock, the pid on this host, the SLURM job.

A sweep re-run waits for these instead of marking their runs interrupted and starting second workers
(the end-to-end cases, with real driver kills, are in tests/integration/test_killpoints.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mtlkit.sweep import state as st


def _running(pid: int, host: str | None = None, **where) -> dict:
    return {
        "name": "r",
        "status": "running",
        "where": {"executor": "local", "host": host or socket.gethostname(), "pid": pid, **where},
    }


def _sleeper(code: str = "pass") -> subprocess.Popen:
    """A process that runs ``code``, prints ``ready`` and sleeps until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import time; {code}; print('ready', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_held_run_lock_means_alive_whatever_the_record_says(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    holder = _sleeper(
        "import fcntl, os; "
        f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'31337 node7')"
    )
    try:
        assert st.worker_alive({"name": "r", "status": "interrupted"}, run) == "process 31337 on node7"
    finally:
        holder.kill()
        holder.wait()
    assert st.worker_alive({"name": "r", "status": "interrupted"}, run) is None  # the kernel dropped the lock


def test_a_running_record_with_a_live_pid_here_is_alive_before_the_lock_is_taken(tmp_path: Path) -> None:
    proc = _sleeper()
    try:
        assert st.worker_alive(_running(proc.pid), tmp_path) == f"process {proc.pid} on {socket.gethostname()}"
    finally:
        proc.kill()
        proc.wait()
    assert st.worker_alive(_running(proc.pid), tmp_path) is None
    assert st.worker_alive({**_running(proc.pid), "status": "finished"}, tmp_path) is None


def test_a_pid_on_another_host_alone_is_not_taken_as_alive(tmp_path: Path) -> None:
    """Another host's pid cannot be checked from here: its lock on the shared folder is what counts."""
    assert st.worker_alive(_running(os.getpid(), host="elsewhere"), tmp_path) is None


@pytest.mark.parametrize(("listed", "alive"), [("RUNNING", True), ("PENDING", True), ("", False)])
def test_a_slurm_job_is_alive_while_squeue_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str, alive: bool
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\n[ \"$3\" = 77 ] && echo '{listed}'\nexit 0\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rec = _running(4242, host="gpu-node-3", executor="slurm", job_id="77")
    assert st.worker_alive(rec, tmp_path) == ("SLURM job 77" if alive else None)


def test_dry_run_says_wait_for_a_run_whose_worker_is_alive(tmp_path: Path) -> None:
    from mtlkit import sweep as sweeps

    sw = sweeps.sweep_from_dict({"name": "w", "grid": {"seed": [0, 1]}, "run_name": "s{seed}"})
    (tmp_path / "s0").mkdir()
    holder = _sleeper(
        "import fcntl, os; "
        f"fd = os.open({str(tmp_path / 's0' / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX)"
    )
    try:
        assert [(r["name"], r["action"]) for r in sweeps.plan(sw, tmp_path)] == [("s0", "wait"), ("s1", "train")]
    finally:
        holder.kill()
        holder.wait()
