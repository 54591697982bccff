"""SLURM through submitit: one job per run (a job array when the cluster takes one), requeued on preemption.

Each job runs :func:`mtlkit.sweep.worker.execute` for its run. When SLURM preempts the job or its
time limit nears, submitit signals it (USR2) and calls :meth:`SlurmRun.checkpoint`, which
resubmits the same run: the trainer checkpoints every epoch into the run folder, so the
requeued job resumes from ``checkpoints/last.pt`` (``mtlkit train --resume``'s path). With
``gpus_per_node > 1`` a run is one DDP job: one process per GPU, the torchrun environment
(RANK, WORLD_SIZE, MASTER_ADDR, ...) exported from SLURM's, rank 0 records the run. Run folders
and ``sweep.json`` must be on a file system every node sees. ``cluster: local`` runs the same
code path with submitit's local executor (no sbatch): the tests use it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import submitit

from mtlkit.errors import MtlkitError
from mtlkit.sweep.options import SlurmOptions
from mtlkit.sweep.worker import RunJob, TrainFn, execute


class SlurmRun(submitit.helpers.Checkpointable):
    """The callable a SLURM job runs: one sweep run; resubmitted as is when the job is preempted."""

    def __init__(self, train_fn: TrainFn | None = None) -> None:
        self.train_fn = train_fn

    def __call__(self, job: RunJob) -> dict[str, Any]:
        """Execute ``job`` (rank 0 records it; every rank trains when the job has several processes)."""
        if job.cwd and Path(job.cwd).is_dir():
            os.chdir(job.cwd)
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        job.where = {**job.where, "job_id": env.job_id, "rank_count": env.num_tasks}
        return execute(job, self.train_fn)

    def checkpoint(self, job: RunJob) -> submitit.helpers.DelayedSubmission:
        """Requeue the same run: it finds the run folder's last checkpoint and resumes from it."""
        return submitit.helpers.DelayedSubmission(self, job)


def make_executor(opts: SlurmOptions, folder: Path) -> submitit.AutoExecutor:
    """A submitit executor with the run's resources (partition, time, nodes, GPUs, CPUs, memory)."""
    cluster = None if opts.cluster == "slurm" else opts.cluster
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster=cluster or "slurm", slurm_max_num_timeout=opts.max_requeues
    )
    params: dict[str, Any] = {
        "name": "mtlkit-sweep",
        "timeout_min": opts.time_min,
        "nodes": opts.nodes,
        "tasks_per_node": max(1, opts.gpus_per_node),
        "cpus_per_task": opts.cpus_per_task,
        "slurm_setup": list(opts.setup),
        "slurm_additional_parameters": dict(opts.extra),
    }
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.array_parallelism:
        params["slurm_array_parallelism"] = opts.array_parallelism
    executor.update_parameters(**params)
    return executor


def run_jobs(jobs: list[RunJob], ctx: Any) -> None:
    """Submit one job per run (as one array), then follow them until each ended; settle jobs that died."""
    opts: SlurmOptions = ctx.options.slurm
    folder = Path(opts.folder) if opts.folder else ctx.sweep_dir / "slurm"
    try:
        executor = make_executor(opts, folder / "%j")
    except Exception as err:  # noqa: BLE001 - e.g. no sbatch on this machine: one line, not a traceback
        raise MtlkitError(
            f"--executor slurm: cannot use submitit's {opts.cluster} executor: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
        ) from None
    for job in jobs:
        job.threads = opts.cpus_per_task
        job.config = {**job.config, "train": {**job.config.get("train", {}), "progress": False}}
    runner = SlurmRun(ctx.train_fn)
    with executor.batch():
        submitted = [executor.submit(runner, job) for job in jobs]
    pending = dict(zip(submitted, jobs))
    for sj, job in pending.items():
        ctx.say(f"[{job.name}] submitted as job {sj.job_id} (logs: {sj.paths.stdout})")
    ctx.progress.started(job.name for job in jobs)
    while pending:
        for sj in [s for s in pending if s.done()]:
            job = pending.pop(sj)
            error = None
            try:
                sj.result()
            except Exception as err:  # noqa: BLE001 - a job that failed or was cancelled is recorded
                error = f"SLURM job {sj.job_id}: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}"
            ctx.report(ctx.settle(job, error))
        if pending:
            ctx.progress.refresh()
            time.sleep(1.0)
