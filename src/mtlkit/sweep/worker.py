"""One run of a sweep, wherever it executes (this process, a local child, a Ray task, a SLURM job).

:func:`execute` is the same for every executor: it looks at the run folder (finished: skip; has
``checkpoints/last.pt``: resume; else train), records ``running`` with where it runs, trains,
and records ``finished`` or ``failed`` (first line of the error, traceback under ``logs/``) in
``sweep.json`` under the state lock. A run killed mid-epoch leaves its last epoch's checkpoint,
so running the same job again resumes it: that is how SLURM requeues and Ray retries continue.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlkit.config import Config, config_from_dict
from mtlkit.io import atomic_write_text
from mtlkit.sweep import state as st

#: ``train_fn(cfg, resume, run_dir)``: train ``cfg`` into ``run_dir``, or continue the run in ``resume``
TrainFn = Callable[[Config, "Path | None", Path], Path]


@dataclass
class RunJob:
    """Everything a worker needs to execute one run (plain data: it is pickled to other processes/hosts)."""

    sweep_dir: str
    name: str
    config: dict[str, Any]
    plan_hash: str
    made_by: str | None = None
    executor: str = "local"
    threads: int | None = None
    cwd: str | None = None
    where: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run's folder: ``<sweep dir>/<run name>``, fixed before any executor starts."""
        return Path(self.sweep_dir) / self.name


def default_train() -> TrainFn:
    """The trainer's ``train``, imported when a sweep actually trains."""
    from mtlkit.train.trainer import train

    def train_fn(cfg: Config, resume: Path | None, run_dir: Path) -> Path:
        """Resume ``resume`` with its saved config, or train ``cfg`` into ``run_dir``."""
        return train(resume=resume) if resume is not None else train(cfg, run_dir=run_dir)

    return train_fn


def where_now(job: RunJob) -> dict[str, Any]:
    """Where this process runs the job: executor, host, pid, job id, GPUs or threads."""
    import torch

    where: dict[str, Any] = {"executor": job.executor, "host": socket.gethostname(), "pid": os.getpid()}
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    if job_id and job.executor == "slurm":
        where["job_id"] = job_id
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus and torch.cuda.is_available():
        where["gpus"] = gpus
    where["threads"] = torch.get_num_threads()
    where.update(job.where)
    return where


def apply_threads(threads: int | None) -> None:
    """Give this process ``threads`` CPU threads (torch intra-op and OpenMP in child processes)."""
    if not threads:
        return
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _is_main_rank() -> bool:
    """Rank 0 of a DDP run (or not distributed): the process that records the run's state."""
    return int(os.environ.get("RANK", "0")) == 0


def execute(job: RunJob, train_fn: TrainFn | None = None) -> dict[str, Any]:
    """Skip, resume or train one run and record it in ``sweep.json``; returns the run's final record."""
    sweep_dir, run_dir = Path(job.sweep_dir), job.run_dir
    apply_threads(job.threads)
    cfg = config_from_dict(job.config, source=f"{sweep_dir}: run {job.name}")
    cfg.out_dir = str(sweep_dir)
    main = _is_main_rank()
    record = st.update_run if main else (lambda *a, **k: {})
    status = st.run_status(run_dir)
    if status in ("finished", "resumable") and job.made_by is not None and job.made_by != job.plan_hash:
        return record(
            sweep_dir,
            job.name,
            status="failed",
            last_action="stale",
            error=f"{run_dir}: made from a different config (the sweep changed since); delete that "
            "folder to retrain it, or give the sweep another --out folder",
        )
    if status == "finished":
        return record(sweep_dir, job.name, status="finished", last_action="skipped", error=None)
    resume = run_dir if status == "resumable" else None
    record(
        sweep_dir,
        job.name,
        status="running",
        last_action="resumed" if resume else "trained",
        error=None,
        traceback=None,
        run_plan_hash=job.plan_hash,
        attempts_add=1,
        started=st.now(),
        where=where_now(job),
    )
    start = time.perf_counter()
    try:
        out = Path((train_fn or default_train())(cfg, resume, run_dir))
    except Exception as err:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        if not main:
            raise
        tb_path = sweep_dir / "logs" / f"{job.name}.traceback.txt"
        atomic_write_text(tb_path, traceback.format_exc())
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        return record(
            sweep_dir,
            job.name,
            status="failed",
            error=message,
            traceback=f"logs/{tb_path.name}",
            ended=st.now(),
            wall_time_add=time.perf_counter() - start,
        )
    except BaseException:
        record(sweep_dir, job.name, status="interrupted", ended=st.now(), wall_time_add=time.perf_counter() - start)
        raise
    wall = time.perf_counter() - start
    if out.resolve() != run_dir.resolve():
        return record(
            sweep_dir,
            job.name,
            status="failed",
            error=f"training wrote {out}, not the sweep's folder {run_dir}",
            ended=st.now(),
            wall_time_add=wall,
        )
    if st.run_status(out) != "finished":
        return record(
            sweep_dir,
            job.name,
            status="failed",
            ended=st.now(),
            wall_time_add=wall,
            error=f"{out}: training returned but results.json does not say finished",
        )
    return record(sweep_dir, job.name, status="finished", ended=st.now(), wall_time_add=wall, last_wall_time=wall)
