"""The results table in the MTAN paper's layout, with delta_m against the single-task rows.

Runs are grouped into one table per experiment (dataset and task set, including each task's number
of classes), and within a table into rows by architecture, weighting method and any other config
key that differs between runs (the row's "setting"); seeds are averaged. Columns: #P (parameters
relative to one single-task network, from results.json), architecture, weighting, every metric of
every task with its better direction (↑ higher is better, ↓ lower), then the task kind's
``reported_metrics`` (segmentation's mean class accuracy and fwIoU) when some run of the table logged
them, marked ‡ "shown, not in Δm", and

    delta_m = mean over every metric of every task of (-1)^l (M - M_b) / M_b * 100   (l = 1: lower is better)

of each seed's run against the single-task row's seed-mean (Maninis et al. 2019), reported as the
mean over seeds ± the sample standard deviation (ddof = 1) when a row has several seeds; "every
metric" is every task's ``metrics`` only (the columns with ``Column.in_delta``), as in best-epoch
selection, against a single-task row or a published one alike. The best value of each column
(direction respected; delta_m: highest) is bold, the ‡ columns included: they have a direction.

With several seeds, every metric and delta_m of a row is compared with the baseline row by Welch's
t-test (unequal variances, two-sided, ``scipy.stats.ttest_ind(equal_var=False)``) over the seeds;
a difference that is not significant at the 5 % level is marked † (two constant samples: p = 1 when
equal, 0 when not); the ‡ columns are tested too (a cell's own comparison with the baseline row),
while delta_m's test stays over the per-seed delta_m values, which leave them out. The baseline may also be a
published row (``reference:NAME/ROW``, see :mod:`mtlkit.report.reference`); published tables can be
added as greyed reference rows, converted to the units of the runs' evaluation protocol.
"""

from __future__ import annotations

import csv
import io
import warnings
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.records import HASH_IGNORED
from mtlkit.report.deltas import _add_deltas, _add_reference_deltas, _add_references, _add_significance, delta_m
from mtlkit.report.document import slug
from mtlkit.report.numbers import decimals, fmt_delta, fmt_value, sample_std
from mtlkit.report.reference import Reference, ReferenceRow, load_reference
from mtlkit.report.results_table import (
    ALPHA,
    NOT_IN_DELTA,
    NOT_SIGNIFICANT,
    Column,
    ReferenceLine,
    ResultsTable,
    Row,
    arch_label,
    method_label,
)
from mtlkit.report.runs import Run, order_key
from mtlkit.tasks import Task

__all__ = [
    "ALPHA",
    "IGNORED_KEYS",
    "NOT_IN_DELTA",
    "NOT_SIGNIFICANT",
    "Column",
    "ReferenceLine",
    "ResultsTable",
    "Row",
    "arch_label",
    "build_tables",
    "decimals",
    "delta_m",
    "fmt_delta",
    "fmt_value",
    "method_label",
    "sample_std",
    "table_key",
    "tables_csv",
]

#: config keys (and the sections under them) that never make two runs different rows: those that cannot
#: change results (:data:`mtlkit.records.HASH_IGNORED`, one list), the run's name and its seed
IGNORED_KEYS = ("name", "seed", *HASH_IGNORED)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):  # an empty mapping (e.g. model.options: {}) is the same as none
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _signature(run: Run) -> tuple:
    return (run.dataset, tuple((t["name"], t["kind"], int(t["channels"])) for t in run.tasks))


def table_key(dataset: str, tasks: list[dict[str, Any]]) -> str:
    """File-name friendly key of an experiment: dataset and tasks with their channels."""
    return slug(dataset + "-" + "-".join(f"{t['name']}{t['channels']}" for t in tasks))


def build_tables(
    runs: list[Run], source: str = "final", last: int = 1, baseline: str = "single", references: list[str] | None = None
) -> list[ResultsTable]:
    """Group finished runs into experiment tables and rows, average seeds, and compute delta_m.

    ``baseline``: an architecture name, or ``reference:NAME/ROW`` for a published row. ``references``:
    names of shipped reference tables whose rows are added (greyed) to every table.
    """
    refs = [load_reference(n) for n in references or []]
    ref_base = _reference_baseline(baseline)
    finished = [r for r in runs if r.finished and r.tasks]
    groups: dict[tuple, list[Run]] = {}
    for run in finished:
        groups.setdefault(_signature(run), []).append(run)
    label = f"mean of last {last} epochs" if last > 1 else source
    tables = []
    for (dataset, _), members in groups.items():
        tasks = members[0].tasks
        columns = _columns(tasks)
        flat = [_flatten(r.config) for r in members]
        skip = (*IGNORED_KEYS, "model.arch", "weighting.name")
        keys = sorted(k for k in {k for f in flat for k in f} if not any(k == s or k.startswith(s + ".") for s in skip))
        varying = [k for k in keys if len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
        rows: dict[tuple, Row] = {}
        for run, f in zip(members, flat):
            setting = {k: f[k] for k in varying if k in f}
            rkey = (run.arch, run.weighting, repr(sorted(setting.items())))
            if rkey not in rows:
                rows[rkey] = Row(run.arch, run.weighting, setting, [])
            rows[rkey].runs.append(run)
        ordered = sorted(rows.values(), key=lambda r: (order_key(r.arch, r.weighting), r.setting_text))
        for row in ordered:
            row.runs.sort(key=lambda r: (r.seed if r.seed is not None else -1, r.name))
            per_run = [r.values(source, last) for r in row.runs]
            for col in columns:
                vals = [v[col.key] for v in per_run if col.key in v]
                if vals:
                    row.mean[col.key] = sum(vals) / len(vals)
                    if len(vals) > 1:
                        row.std[col.key] = sample_std(vals)
        # a kind's reported metrics are columns only where some row logged them (older runs did not)
        columns = [c for c in columns if c.in_delta or any(c.key in r.mean for r in ordered)]
        table = ResultsTable(table_key(dataset, tasks), dataset, tasks, columns, ordered, label)
        if source == "best":
            _note_missing_best(table)
        if ref_base is not None:
            _add_reference_deltas(table, *ref_base, source, last)
        else:
            _add_deltas(table, baseline, source, last)
            _add_significance(table, source, last)
        _add_references(table, refs)
        tables.append(table)
    return tables


def _columns(tasks: list[dict[str, Any]]) -> list[Column]:
    """Each task's columns in order: its ``metrics`` (in Δm), then its kind's ``reported_metrics`` (not)."""
    out = []
    for data in tasks:
        task = Task.from_dict(data)
        for metrics, in_delta in ((task.metrics, True), (task.reported_metrics, False)):
            out += [
                Column(f"{task.name}/{m}", task.name, m, bool(h), task.metric_label(m), in_delta)
                for m, h in metrics.items()
            ]
    return out


def _reference_baseline(baseline: str) -> tuple[Reference, ReferenceRow] | None:
    """``(reference, row)`` of a ``reference:NAME/ROW`` baseline, None for an architecture name."""
    if not baseline.startswith("reference:"):
        return None
    name, sep, row = baseline[len("reference:") :].partition("/")
    if not sep or not name or not row:
        raise ConfigError(f"--baseline {baseline!r}: expected reference:NAME/ROW (e.g. reference:mtan_paper/One Task)")
    ref = load_reference(name)
    return ref, ref.row(row)


def _note_missing_best(table: ResultsTable) -> None:
    """Say why a table built from ``best`` values has none: runs without model selection."""
    notes = {
        (r.results or {}).get("best_note") for row in table.rows for r in row.runs if not (r.results or {}).get("best")
    }
    if notes:
        table.notes.append(
            "Some runs have no best epoch, so --use best leaves them empty: "
            + "; ".join(sorted(n or "results.json has no best values" for n in notes))
            + "."
        )


def tables_csv(tables: list[ResultsTable]) -> str:
    """Every table's rows as one CSV (a ``table`` column tells the experiments apart)."""
    records = [rec for t in tables for rec in t.records()]
    fields: list[str] = []
    for rec in records:
        fields += [k for k in rec if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return buf.getvalue()


def __getattr__(name: str) -> Any:
    if name == "TASK_LABELS":  # deprecated in 0.3: a task kind names its column group (TaskKind.column_label)
        warnings.warn(
            "mtlkit.report.table.TASK_LABELS is deprecated and will be removed: a task kind's "
            "column_label (Task.column_label()) names the task's column group",
            DeprecationWarning,
            stacklevel=2,
        )
        from mtlkit.registry import TASK_KINDS

        return {n: c.column_label for n, c in TASK_KINDS.items() if c.column_label}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
