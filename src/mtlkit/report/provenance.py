"""Where numbers came from: per-run config hash, versions, commit, machine, wall time; and the report's own."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from typing import Any

from mtlkit.report.runs import Run


def run_provenance(run: Run) -> dict[str, Any]:
    """The provenance fields of one run (from results.json and config.yaml; None where unknown)."""
    res = run.results or {}
    machine = res.get("machine")
    if isinstance(machine, dict):
        machine = ", ".join(f"{k}={v}" for k, v in machine.items())
    versions = res.get("versions") or {}
    return {
        "run": run.name,
        "path": str(run.path),
        "sweep": run.sweep,
        "status": run.status,
        "arch": run.arch,
        "weighting": run.weighting,
        "seed": run.seed,
        "epochs": len(run.epochs),
        "best_epoch": res.get("best_epoch"),
        "params": res.get("params"),
        "config_hash": res.get("config_hash"),
        "versions": versions,
        "git_commit": res.get("git_commit"),
        "machine": machine,
        "wall_time": run.wall_time,
    }


def report_provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The report's own provenance: when, with which versions, from which commit, on which machine."""
    import matplotlib
    import numpy
    import torch

    import mtlkit
    from mtlkit.train.rundir import git_commit

    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(argv if argv is not None else sys.argv),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "matplotlib": matplotlib.__version__,
            "mtlkit": mtlkit.__version__,
        },
        "git_commit": git_commit(),
        "machine": {"host": platform.node(), "platform": platform.platform()},
    }


def fmt_duration(seconds: float | None) -> str:
    """``3725`` -> ``1h 02m 05s``; '–' when unknown."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{seconds:.1f}s"
