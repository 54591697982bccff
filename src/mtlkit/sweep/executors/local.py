"""This machine: the runs one after another in this process, or ``parallel`` at once in child processes.

A parallel run gets a fresh process (spawned, so CUDA starts clean in it) pinned to one GPU through
``CUDA_VISIBLE_DEVICES`` (GPUs shared round-robin when there are fewer than ``parallel``), or,
without GPUs, to its share of the CPU cores through its thread count. Its output goes to
``<sweep>/logs/<run>.log``; a process that dies without recording its run is recorded as failed.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from mtlkit.sweep import state as st
from mtlkit.sweep.worker import RunJob, TrainFn, execute


def run_jobs(jobs: list[RunJob], ctx: Any) -> None:
    """Run ``jobs`` one after another here (``parallel`` 1), else in up to ``parallel`` child processes."""
    if ctx.options.local.parallel <= 1:
        for job in jobs:
            ctx.progress.started([job.name])
            ctx.say(
                f"[{job.name}] {'resuming' if st.run_status(job.run_dir) == 'resumable' else 'training'} "
                f"in {job.run_dir}"
            )
            ctx.report(execute(job, ctx.train_fn))
        return
    _run_parallel(jobs, ctx)


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def placements(parallel: int, gpus: int, cores: int, threads: int | None) -> list[dict[str, Any]]:
    """Per slot: the GPU it is pinned to (round-robin) or its CPU thread count (cores / parallel)."""
    if gpus > 0:
        return [{"gpu": str(i % gpus), "threads": threads or max(1, cores // parallel)} for i in range(parallel)]
    return [{"gpu": None, "threads": threads or max(1, cores // parallel)} for _ in range(parallel)]


def _child(job: RunJob, train_fn: TrainFn | None, gpu: str | None, log_path: str) -> None:
    """A parallel run's process: pin it, send its output to its log file, execute it."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    execute(job, train_fn)


def _run_parallel(jobs: list[RunJob], ctx: Any) -> None:
    """Keep ``parallel`` child processes busy until every job ran; settle the ones that died."""
    opts = ctx.options.local
    slots = placements(opts.parallel, gpu_count(), cpu_cores(), opts.threads_per_run)
    mp = multiprocessing.get_context("spawn")
    pending = deque(jobs)
    free = deque(range(len(slots)))
    running: dict[int, tuple[Any, RunJob, int]] = {}  # sentinel -> (process, job, slot)
    try:
        while pending or running:
            while pending and free:
                slot, job = free.popleft(), pending.popleft()
                place = slots[slot]
                job.threads = place["threads"]
                job.where = {"slot": slot}
                job.config = {**job.config, "train": {**job.config.get("train", {}), "progress": False}}
                log = Path(job.sweep_dir) / "logs" / f"{job.name}.log"
                proc = mp.Process(
                    target=_child, args=(job, ctx.train_fn, place["gpu"], str(log)), name=f"mtlkit-sweep-{job.name}"
                )
                proc.start()
                running[proc.sentinel] = (proc, job, slot)
                where = f"GPU {place['gpu']}" if place["gpu"] is not None else f"{place['threads']} thread(s)"
                ctx.say(f"[{job.name}] started in process {proc.pid} on {where} (log: {log})")
                ctx.progress.started([job.name])
            for sentinel in wait(list(running), timeout=5.0):
                assert isinstance(sentinel, int)  # wait() returns the sentinels it was given
                proc, job, slot = running.pop(sentinel)
                proc.join()
                error = None if proc.exitcode == 0 else f"worker process {proc.pid} exited with code {proc.exitcode}"
                ctx.report(ctx.settle(job, error))
                free.append(slot)
            ctx.progress.refresh()
    finally:
        for proc, _job, _slot in running.values():  # interrupted driver: stop the children, mark their runs
            proc.terminate()
        deadline = time.monotonic() + 30
        for proc, job, _ in running.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            rec = st.run_record(Path(job.sweep_dir), job.name)
            if rec["status"] in ("running", "pending"):
                st.update_run(Path(job.sweep_dir), job.name, status="interrupted", ended=st.now())
