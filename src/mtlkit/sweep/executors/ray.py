"""Ray core tasks: one task per run, placed by its declared CPUs/GPUs; a dead worker's run is retried.

Why core tasks and not Ray Tune: the sweep already expands the grid, names the runs, keeps their
state and resumes them from their run folders; Tune would add a second grid, a second trial
folder layout and its own checkpoint protocol around the same trainer. A core task with
``max_retries`` gives what is missing: placement by resources on a cluster, and a retry when the
worker process (or its node) dies. The retried task runs :func:`mtlkit.sweep.worker.execute` again,
which finds ``checkpoints/last.pt`` in the run folder and resumes from it. Errors raised by
training are recorded as failed runs and not retried (``retry_exceptions`` off): they would fail
again. Every node needs mtlkit installed and the sweep folder on a shared file system.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from mtlkit.errors import MtlkitError
from mtlkit.sweep.options import RayOptions
from mtlkit.sweep.worker import RunJob, TrainFn, execute


def _run_on_worker(job: RunJob, train_fn: TrainFn | None) -> dict[str, Any]:
    """The Ray task: execute one run on whichever worker Ray placed it."""
    if job.cwd and Path(job.cwd).is_dir():
        os.chdir(job.cwd)
    job.where = {**job.where, "node": ray.get_runtime_context().get_node_id()[:12]}
    return execute(job, train_fn)


def run_jobs(jobs: list[RunJob], ctx: Any) -> None:
    """Start one task per run with the run's resources, then collect them as they end; settle lost ones."""
    opts: RayOptions = ctx.options.ray
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
        except Exception as err:  # noqa: BLE001 - one line for the user, not Ray's traceback
            where = opts.address or "a local instance"
            raise MtlkitError(
                f"--executor ray: could not start or join {where}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
            ) from None
    try:
        task = ray.remote(_run_on_worker).options(
            num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus,
            max_retries=opts.max_retries,
            retry_exceptions=False,
            name="mtlkit-sweep-run",
        )
        refs = {}
        for job in jobs:
            job.threads = max(1, int(opts.num_cpus))
            job.config = {**job.config, "train": {**job.config.get("train", {}), "progress": False}}
            refs[task.remote(job, ctx.train_fn)] = job
        ctx.say(
            f"{len(refs)} runs submitted to Ray ({opts.num_cpus:g} CPU, {opts.num_gpus:g} GPU each; "
            f"cluster: {ray.cluster_resources()})"
        )
        ctx.progress.started(job.name for job in jobs)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=5.0)
            for ref in ready:
                job = refs.pop(ref)
                error = None
                try:
                    ray.get(ref)
                except Exception as err:  # noqa: BLE001 - retries exhausted or task lost: record it, go on
                    error = f"Ray: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                ctx.report(ctx.settle(job, error))
            ctx.progress.refresh()
    finally:
        if started_here:
            ray.shutdown()
