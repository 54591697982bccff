"""Grids of runs as one command: a sweep file expanded into runs, executed here or on a cluster.

``spec`` parses a sweep file into named runs with validated configs; ``state`` keeps
``sweep.json`` and its locks; ``worker`` executes one run (skip / resume / train, recorded);
``runner`` drives a sweep through an executor in ``executors`` (local, slurm, ray); ``options``
holds each executor's resources; ``progress`` the overall bar. Re-running a sweep skips finished
runs, resumes runs that have ``checkpoints/last.pt`` and starts the rest; a run that raises is
recorded as failed (error, traceback under ``logs/``) and the sweep goes on.
"""

from mtlkit.sweep.options import ExecutorOptions, LocalOptions, RayOptions, SlurmOptions, with_flags
from mtlkit.sweep.runner import SweepOutcome, plan, run_sweep
from mtlkit.sweep.spec import (
    HASH_IGNORED,
    NAME_PREFIXES,
    SWEEP_KEYS,
    Sweep,
    SweepRun,
    check_names,
    default_sweep_dir,
    load_sweep,
    sweep_from_dict,
)
from mtlkit.sweep.state import STATUSES, read_state, run_status, status_lines
from mtlkit.sweep.worker import RunJob, TrainFn, execute

__all__ = [
    "HASH_IGNORED",
    "NAME_PREFIXES",
    "STATUSES",
    "SWEEP_KEYS",
    "ExecutorOptions",
    "LocalOptions",
    "RayOptions",
    "RunJob",
    "SlurmOptions",
    "Sweep",
    "SweepOutcome",
    "SweepRun",
    "TrainFn",
    "check_names",
    "default_sweep_dir",
    "execute",
    "load_sweep",
    "plan",
    "read_state",
    "run_status",
    "run_sweep",
    "status_lines",
    "sweep_from_dict",
    "with_flags",
]
