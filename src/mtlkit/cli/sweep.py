"""`mtlkit sweep SWEEP.yaml|PRESET [key=value ...] [--dry-run] [--out DIR]`: run a grid of trainings."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtlkit import sweep as sweeps
from mtlkit.catalog import resolve

DESCRIPTION = """\
Run every configuration of a sweep file one after another, one run folder each under the sweep
folder (default <out_dir>/<name> from the sweep file). Finished runs are skipped and interrupted
ones resumed, so re-running the same command continues a sweep. A run that fails is recorded in
<sweep folder>/sweep.json (status, error, traceback under logs/) and the sweep goes on; the exit
code is 1 if any run failed. SWEEP is a sweep file or the name of a sweep preset (`mtlkit list`);
an existing file wins over a preset of the same name. Sweep file format: see the docstring of
mtlkit.sweep or the sweep presets (src/mtlkit/presets/sweeps/)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to the ``mtlkit`` parser."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of trainings (architectures x weightings x seeds x any key)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_file", type=Path, metavar="SWEEP",
                   help="the sweep file, or a sweep preset name (a file wins over a preset)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every run (after the sweep file's own), e.g. train.epochs=2")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="the sweep folder (default: <out_dir>/<name> from the sweep file)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs and what would happen to each (train, resume, skip), train nothing")
    p.add_argument("--no-progress", action="store_true", help="no overall progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Expand the sweep, then either list it (--dry-run) or run it; 1 when a run failed."""
    sweep = sweeps.load_sweep(resolve(args.sweep_file, "sweep"), overrides=args.overrides)
    sweep_dir = args.out if args.out is not None else sweeps.default_sweep_dir(sweep)
    runs = sweep.runs()
    sweeps.check_names(runs)
    if args.dry_run:
        rows = sweeps.plan(sweep, sweep_dir)
        width = max(len(r["name"]) for r in rows) if rows else 4
        print(f"sweep {sweep.name}: {len(rows)} runs in {sweep_dir}")
        for r in rows:
            values = ", ".join(f"{k}={v}" for k, v in r["assignment"].items())
            print(f"  {r['name']:<{width}}  {r['action']:<6}  {values}")
        return 0
    outcome = sweeps.run_sweep(sweep, sweep_dir, progress=not args.no_progress)
    for rec in outcome.failed:
        print(f"failed: {rec['name']}: {rec['error']}")
    return 0 if outcome.ok else 1
