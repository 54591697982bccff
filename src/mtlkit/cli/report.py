"""`mtlkit report RUN_DIR_OR_SWEEP_DIR... --out DIR`: tables, figures and provenance as Markdown + HTML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlkit.errors import ConfigError

DESCRIPTION = """\
Write a report of finished runs: report.md and a self-contained report.html (figures embedded),
the results tables as tables.csv / tables.json (MTAN paper layout: #P, architecture, weighting,
every metric with its better direction, best in bold, delta_m vs the single-task rows with its
spread over seeds), figures/*.png (training curves, task weights, cross-stitch alphas, MTAN/STAN
attention masks, performance vs number of classes) and provenance.json (config hashes, versions,
git commit, machine, wall time per run). Arguments may be run folders, sweep folders (with
sweep.json), or folders holding either."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` command to the ``mtlkit`` parser."""
    p = subparsers.add_parser(
        "report",
        help="tables, figures and provenance of runs/sweeps as report.md + report.html",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR_OR_SWEEP_DIR", help="what to report on")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the report into")
    p.add_argument("--title", default="mtlkit report", help="the report's title")
    p.add_argument(
        "--use",
        choices=["final", "best"],
        default="final",
        help="which validation metrics of each run: last epoch (final, default) or best epoch",
    )
    p.add_argument(
        "--average-last",
        type=int,
        default=None,
        metavar="K",
        help="use the mean of the last K epochs' validation metrics instead (K > 1); default: the "
        "runs' eval.report_last (the paper configs: 10), else 1",
    )
    p.add_argument(
        "--baseline",
        default="single",
        metavar="ARCH",
        help="architecture of the delta_m baseline rows (default: single), or a published row "
        "reference:NAME/ROW, e.g. 'reference:mtan_paper/One Task'",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME",
        help="add a published table as greyed rows (repeatable): " + ", ".join(_references()),
    )
    p.add_argument(
        "--attention-images",
        type=int,
        default=2,
        metavar="N",
        help="validation images per MTAN/STAN run in the attention figures (0: none)",
    )
    p.add_argument(
        "--no-models",
        action="store_true",
        help="do not load trained models (skips attention masks and cross-stitch alphas)",
    )
    p.set_defaults(func=run)
    return p


def _references() -> list[str]:
    from mtlkit.report.reference import available

    return available()


def run(args: argparse.Namespace) -> int:
    """Build the report; prints the paths of the Markdown and HTML files."""
    from mtlkit.report.build import ReportOptions, make_report

    if args.average_last is not None and args.average_last < 1:
        raise ConfigError(f"--average-last must be at least 1, got {args.average_last}")
    if args.average_last is not None and args.average_last > 1 and args.use != "final":
        raise ConfigError("--average-last averages the last epochs; it cannot be combined with --use best")
    options = ReportOptions(
        source=args.use,
        last=args.average_last,
        baseline=args.baseline,
        references=list(args.reference),
        attention_images=args.attention_images,
        models=not args.no_models,
        title=args.title,
        argv=["mtlkit", *sys.argv[1:]],
    )
    files = make_report(args.paths, args.out, options)
    print(f"report: {files.markdown}")
    print(f"report: {files.html}")
    print(f"{len(files.figures)} figures in {files.out / 'figures'}; tables in {files.out / 'tables.csv'}")
    return 0
