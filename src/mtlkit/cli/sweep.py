"""`mtlkit sweep SWEEP.yaml|PRESET [key=value ...] [--executor local|slurm|ray] [--parallel N] [--status]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtlkit import sweep as sweeps
from mtlkit.catalog import resolve
from mtlkit.errors import ConfigError

DESCRIPTION = """\
Run every configuration of a sweep file, one run folder each under the sweep folder (default
<out_dir>/<name> from the sweep file). Finished runs are skipped and interrupted ones resumed, so
re-running the same command continues a sweep. A run that fails is recorded in
<sweep folder>/sweep.json (status, error, traceback under logs/) and the sweep goes on; the exit
code is 1 if any run failed. SWEEP is a sweep file or the name of a sweep preset (`mtlkit list`);
an existing file wins over a preset of the same name.

Executors: local (this machine; --parallel N runs at once, each on its own GPU or its share of the
CPU cores), slurm (one SLURM job per run through submitit: pip install 'mtlkit[slurm]'), ray (one
Ray task per run on a Ray cluster: pip install 'mtlkit[ray]'). Their resources come from the
sweep file's `executors` section; the flags below override it. --status SWEEP (a sweep file or a
sweep folder) prints one line per run. Sweep file format: see mtlkit.sweep.spec or the sweep presets
(src/mtlkit/presets/sweeps/)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to the ``mtlkit`` parser."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of trainings (architectures x weightings x seeds x any key)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "sweep_file",
        type=Path,
        metavar="SWEEP",
        help="the sweep file, or a sweep preset name (a file wins over a preset); --status: or the sweep folder",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every run (after the sweep file's own), e.g. train.epochs=2",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="the sweep folder (default: <out_dir>/<name> from the sweep file)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs and what would happen to each (train, resume, skip), train nothing",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print one line per run (pending, running where, finished, failed with its error)",
    )
    p.add_argument("--no-progress", action="store_true", help="no overall progress bar")
    p.add_argument(
        "--executor", choices=["local", "slurm", "ray"], default="local", help="where the runs execute (default: local)"
    )
    g = p.add_argument_group("local executor")
    g.add_argument("--parallel", type=int, default=None, metavar="N", help="runs at once on this machine")
    g.add_argument(
        "--threads-per-run",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads per parallel run (default: cores / N)",
    )
    g = p.add_argument_group("slurm executor (submitit)")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--time-min", type=int, default=None, metavar="MIN", help="time limit per job (requeued after)")
    g.add_argument("--nodes", type=int, default=None, help="nodes per run")
    g.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        metavar="N",
        help="GPUs per node; > 1 runs each run as a DDP job with one process per GPU",
    )
    g.add_argument("--cpus-per-task", type=int, default=None, metavar="N", help="CPU cores per process")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per node")
    g.add_argument("--array-parallelism", type=int, default=None, metavar="N", help="at most N runs at once")
    g.add_argument(
        "--slurm-cluster",
        choices=["slurm", "local", "debug"],
        default=None,
        help="submitit's executor: slurm (default), local (same code path without sbatch)",
    )
    g = p.add_argument_group("ray executor")
    g.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster (auto, ray://host:10001)")
    g.add_argument("--cpus-per-run", type=float, default=None, metavar="N", help="Ray CPUs per run")
    g.add_argument("--gpus-per-run", type=float, default=None, metavar="N", help="Ray GPUs per run")
    g.add_argument(
        "--max-retries", type=int, default=None, metavar="N", help="Ray: restarts of a run whose worker died"
    )
    p.set_defaults(func=run)
    return p


def _flags(args: argparse.Namespace) -> dict[str, dict]:
    """The executor flags given on the command line, per executor section."""
    return {
        "local": {"parallel": args.parallel, "threads_per_run": args.threads_per_run},
        "slurm": {
            "partition": args.partition,
            "time_min": args.time_min,
            "nodes": args.nodes,
            "gpus_per_node": args.gpus_per_node,
            "cpus_per_task": args.cpus_per_task,
            "mem_gb": args.mem_gb,
            "array_parallelism": args.array_parallelism,
            "cluster": args.slurm_cluster,
        },
        "ray": {
            "address": args.ray_address,
            "num_cpus": args.cpus_per_run,
            "num_gpus": args.gpus_per_run,
            "max_retries": args.max_retries,
        },
    }


def _status(args: argparse.Namespace) -> int:
    """Print the state of a sweep folder (given as the folder, or as its sweep file plus --out)."""
    if args.sweep_file.is_dir():
        sweep_dir = args.sweep_file
    else:
        sweep = sweeps.load_sweep(resolve(args.sweep_file, "sweep"), overrides=args.overrides)
        sweep_dir = args.out if args.out is not None else sweeps.default_sweep_dir(sweep)
    state = sweeps.read_state(sweep_dir)
    if state is None:
        raise ConfigError(f"{sweep_dir}: no sweep.json (the sweep has not been started)")
    print("\n".join(sweeps.status_lines(state, sweep_dir)))
    return 0


def run(args: argparse.Namespace) -> int:
    """Expand the sweep, then list it (--dry-run), show its state (--status) or run it; 1 when a run failed."""
    if args.status:
        return _status(args)
    sweep = sweeps.load_sweep(resolve(args.sweep_file, "sweep"), overrides=args.overrides)
    sweep_dir = args.out if args.out is not None else sweeps.default_sweep_dir(sweep)
    runs = sweep.runs()
    sweeps.check_names(runs)
    given = {k: v for k, v in _flags(args).items() if any(x is not None for x in v.values())}
    for section in given:
        if section != args.executor:
            raise ConfigError(f"{section} executor options given, but this sweep runs with --executor {args.executor}")
    options = sweeps.with_flags(sweep.executors, args.executor, _flags(args)[args.executor])
    if args.dry_run:
        rows = sweeps.plan(sweep, sweep_dir)
        width = max(len(r["name"]) for r in rows) if rows else 4
        print(f"sweep {sweep.name}: {len(rows)} runs in {sweep_dir}")
        for r in rows:
            values = ", ".join(f"{k}={v}" for k, v in r["assignment"].items())
            print(f"  {r['name']:<{width}}  {r['action']:<6}  {values}")
        return 0
    outcome = sweeps.run_sweep(sweep, sweep_dir, progress=not args.no_progress, executor=args.executor, options=options)
    for rec in outcome.failed:
        print(f"failed: {rec['name']}: {rec['error']}")
    return 0 if outcome.ok else 1
