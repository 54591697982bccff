"""Drive a sweep: record its runs in ``sweep.json``, hand the runs that need training to an executor.

The driver holds ``sweep.lock`` while it runs, writes the initial state, settles what needs no
training itself (finished runs are skipped, runs made by an older version of the sweep are
failed as stale), and gives the rest to the executor (``local``, ``slurm``, ``ray``). Every
executor runs :func:`mtlkit.sweep.worker.execute` for each run, which records the run's state, so
``sweep.json`` reads the same whatever executed the runs.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlkit.sweep import state as st
from mtlkit.sweep import worker
from mtlkit.sweep.options import ExecutorOptions, require_extra
from mtlkit.sweep.progress import SweepProgress
from mtlkit.sweep.spec import Sweep, default_sweep_dir
from mtlkit.sweep.worker import RunJob, TrainFn


@dataclass
class SweepOutcome:
    """What one invocation of a sweep did: the state written to sweep.json and the failures."""

    sweep_dir: Path
    state: dict[str, Any]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Records of the runs whose status is failed."""
        return [r for r in self.state["runs"] if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        """True when no run failed."""
        return not self.failed


@dataclass
class Context:
    """What an executor gets besides the jobs: where the state lives, how to train, report and log."""

    sweep_dir: Path
    options: ExecutorOptions
    train_fn: TrainFn | None
    progress: SweepProgress
    say: Callable[[str], None]

    def settle(self, job: RunJob, error: str | None = None) -> dict[str, Any]:
        """After a job's process ended: a record still ``running`` means the worker died; record it as failed."""
        rec = st.run_record(self.sweep_dir, job.name)
        if rec["status"] in ("running", "pending"):
            message = (error or "the worker process ended without recording the run").splitlines()[0][:500]
            rec = st.update_run(self.sweep_dir, job.name, status="failed", error=message, ended=st.now())
        return rec

    def report(self, rec: dict[str, Any]) -> None:
        """Log a run's outcome and advance the overall bar."""
        if rec["status"] == "failed":
            self.say(f"[{rec['name']}] FAILED: {rec.get('error')}")
        elif rec.get("last_action") == "skipped":
            self.say(f"[{rec['name']}] finished already: skipped")
        trained = rec.get("last_action") in ("trained", "resumed") and rec["status"] == "finished"
        self.progress.finished(rec["name"], rec.get("last_wall_time") if trained else None)


#: executor name -> module under mtlkit.sweep.executors with ``run_jobs(jobs, ctx)``
EXECUTOR_MODULES = {"local": "local", "slurm": "slurm", "ray": "ray"}


def plan(sweep: Sweep, sweep_dir: Path) -> list[dict[str, Any]]:
    """For each run: its name, grid values and what a run of the sweep would do now (train/resume/skip/wait)."""
    state = st.read_state(Path(sweep_dir))
    recorded = {r["name"]: r for r in state.get("runs", [])} if state else {}
    rows = []
    for run in sweep.runs():
        rec = recorded.get(run.name, {})
        run_dir = Path(sweep_dir) / run.name
        status = st.run_status(run_dir)
        made_by = rec.get("run_plan_hash")
        stale = status in ("finished", "resumable") and made_by not in (None, run.plan_hash())
        action = {"finished": "skip", "resumable": "resume"}.get(status, "train")
        if status != "finished" and st.worker_alive(rec, run_dir) is not None:
            action = "wait"  # its worker (left by a killed driver) still trains it
        rows.append(
            {
                "name": run.name,
                "assignment": run.assignment,
                "action": "stale" if stale else action,
                "run_dir": str(run_dir),
            }
        )
    return rows


def _initial_state(sweep: Sweep, runs: list, old: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """The sweep.json of this invocation: every run's record, keeping what earlier invocations learned.

    A run recorded ``running`` stays so (with where it runs) while its worker is alive
    (:func:`mtlkit.sweep.state.worker_alive`); else its worker died with the last driver: ``interrupted``.
    """
    previous = {r["name"]: r for r in old.get("runs", [])}
    state: dict[str, Any] = {
        "name": sweep.name,
        "description": sweep.description,
        "source": str(sweep.source.resolve()) if sweep.source is not None else None,
        "grid": sweep.grid,
        "exclude": sweep.exclude,
        "include": sweep.include,
        "fixed": sweep.fixed,
        "overrides": sweep.overrides,
        "created": old.get("created", st.now()),
        "updated": st.now(),
        "runs": [],
    }
    for run in runs:
        rec = previous.get(run.name, {})
        status = rec.get("status", "pending")
        alive = status == "running" and st.worker_alive(rec, sweep_dir / run.name) is not None
        state["runs"].append(
            {
                "name": run.name,
                "assignment": run.assignment,
                "plan_hash": run.plan_hash(),
                "config_hash": run.config.hash(),
                "status": "interrupted" if status == "running" and not alive else status,
                "run_dir": run.name,
                "error": rec.get("error"),
                "traceback": rec.get("traceback"),
                "attempts": rec.get("attempts", 0),
                "wall_time": rec.get("wall_time", 0.0),
                "run_plan_hash": rec.get("run_plan_hash"),
                "last_action": None,
                **({"where": rec.get("where"), "started": rec.get("started")} if alive else {}),
            }
        )
    return state


def _needs_training(job: RunJob) -> bool:
    """Whether the executor must run the job (not finished already, not stale)."""
    status = st.run_status(job.run_dir)
    stale = status in ("finished", "resumable") and job.made_by is not None and job.made_by != job.plan_hash
    return status != "finished" and not stale


#: seconds between looks at the run locks of workers an earlier driver left running
WAIT_POLL = 1.0


def _wait_for_workers(busy: list[RunJob], records: dict[str, dict[str, Any]], ctx: Context) -> list[RunJob]:
    """Wait until the workers still training ``busy`` runs (left by a killed driver) end; the jobs, to settle.

    A second worker is never started on a run whose worker is alive: two processes would write one
    run's checkpoints. Once a worker ended, the job goes the usual way (finished: skipped; killed:
    resumed from its checkpoint).
    """
    waiting = list(busy)
    for job in waiting:
        ctx.say(
            f"[{job.name}] still trained by {st.worker_alive(records[job.name], job.run_dir)} (started by an "
            "earlier sweep driver): waiting for it instead of starting a second worker"
        )
    while waiting:
        waiting = [job for job in waiting if st.worker_alive(_current(ctx.sweep_dir, job.name), job.run_dir)]
        if waiting:
            ctx.progress.refresh()
            time.sleep(WAIT_POLL)
    return busy


def _current(sweep_dir: Path, name: str) -> dict[str, Any]:
    """Run ``name``'s record in sweep.json as it is now (workers update it)."""
    state = st.read_state(sweep_dir) or {}
    return next((r for r in state.get("runs", []) if r["name"] == name), {})


def run_sweep(
    sweep: Sweep,
    sweep_dir: str | Path | None = None,
    train_fn: TrainFn | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    executor: str = "local",
    options: ExecutorOptions | None = None,
) -> SweepOutcome:
    """Run every run of ``sweep`` (skip finished, resume interrupted) with ``executor``, recording sweep.json."""
    from tqdm.auto import tqdm

    require_extra(executor)
    options = options or sweep.executors
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(sweep)
    sweep_dir = sweep_dir.resolve()
    runs = sweep.runs()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with st.driver_lock(sweep_dir):
        state = _initial_state(sweep, runs, st.read_state(sweep_dir) or {}, sweep_dir)
        st.write_state(sweep_dir, state)
        jobs = [
            RunJob(
                sweep_dir=str(sweep_dir),
                name=run.name,
                config=run.config.to_dict(),
                plan_hash=rec["plan_hash"],
                made_by=rec["run_plan_hash"],
                executor=executor,
                cwd=str(Path.cwd()),
            )
            for run, rec in zip(runs, state["runs"])
        ]
        say = log or (lambda msg: tqdm.write(msg))
        concurrency = options.local.parallel if executor == "local" else len(jobs)
        bar = SweepProgress(sweep.name, len(jobs), concurrency, enabled=progress)
        ctx = Context(sweep_dir, options, train_fn, bar, say)
        try:
            records = {r["name"]: r for r in state["runs"]}
            busy = [job for job in jobs if st.worker_alive(records[job.name], job.run_dir) is not None]
            jobs = _wait_for_workers(busy, records, ctx) + [job for job in jobs if job not in busy]
            todo = []
            for job in jobs:
                if _needs_training(job):
                    todo.append(job)
                else:
                    ctx.report(worker.execute(job, train_fn))
            if todo:
                module = importlib.import_module(f"mtlkit.sweep.executors.{EXECUTOR_MODULES[executor]}")
                module.run_jobs(todo, ctx)
        finally:
            bar.close()
            final = st.read_state(sweep_dir) or state
            changed = False
            for rec in final["runs"]:  # a driver stopped mid-run (Ctrl-C) leaves no run 'running' behind
                if rec["status"] == "running" and executor == "local" and st.record_is_stale(rec):
                    rec["status"], changed = "interrupted", True
            if changed:
                st.write_state(sweep_dir, final)
        n = {s: sum(r["status"] == s for r in final["runs"]) for s in st.STATUSES}
        say(
            f"sweep {sweep.name}: {n['finished']} finished, {n['failed']} failed, "
            f"{len(runs) - n['finished'] - n['failed']} other; state in {sweep_dir / 'sweep.json'}"
        )
    return SweepOutcome(sweep_dir, final)
