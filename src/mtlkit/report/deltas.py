"""delta_m of each row against its baseline (a single-task row or a published row), published reference rows
in the table's units, and Welch's t-tests of each row's seeds against its baseline row's.

delta_m is over the table's ``delta_columns`` only (every task's ``metrics``): a column shown but not in
Δm (a kind's ``reported_metrics``) changes no delta_m, against either kind of baseline. Welch's test
covers every column (each cell against the baseline row's) and delta_m's own per-seed values.
"""

from __future__ import annotations

import math
from typing import Any

from mtlkit.report.numbers import sample_std
from mtlkit.report.reference import Reference, ReferenceRow
from mtlkit.report.results_table import Column, ReferenceLine, ResultsTable, Row, arch_label
from mtlkit.report.runs import Run


def delta_m(values: dict[str, float], baseline: dict[str, float], higher_is_better: dict[str, bool]) -> float:
    """Multi-task gain in percent over the metrics present in both dicts, via ``mtlkit.metrics.delta_m``."""
    from mtlkit.metrics import delta_m as metric_delta_m

    keys = [k for k in higher_is_better if k in values and k in baseline]
    return float(
        metric_delta_m(
            {k: values[k] for k in keys}, {k: baseline[k] for k in keys}, {k: higher_is_better[k] for k in keys}
        )
    )


def _add_reference_deltas(table: ResultsTable, ref: Reference, base: ReferenceRow, source: str, last: int) -> None:
    """delta_m of every run against a published row, converted to each row's protocol units."""
    directions = {c.key: c.higher_is_better for c in table.delta_columns}
    line = ReferenceLine(ref, base, ref.values(base, table.rows[0].protocol if table.rows else "pooled"))
    table.baseline, table.baseline_reference = f"published {base.name} [{ref.name}]", line
    shared = sorted(k for k in directions if k in base.raw)
    if not shared:
        table.notes.append(f"The reference row {base.name} [{ref.name}] has none of this table's metrics: no Δm.")
        return
    for row in table.rows:
        values = ref.values(base, row.protocol)
        higher = {k: directions[k] for k in shared if values[k] != 0}
        row.baseline_mean = values
        row.deltas = _run_deltas(row.runs, values, higher, source, last)
    missing = sorted(set(directions) - set(shared))
    table.notes.append(
        f"Δm against the published row {base.name} [{ref.name}] ({ref.source})"
        + (f"; over {', '.join(shared)} only (the reference lacks {', '.join(missing)})." if missing else ".")
    )
    if ref.protocol not in table.protocols:
        table.notes.append(
            f"The reference row was evaluated under protocol {ref.meta.get('protocol')}, the runs "
            f"under {', '.join(table.protocols)}: the Δm mixes protocols."
        )


def _add_references(table: ResultsTable, refs: list[Reference]) -> None:
    """Greyed published rows (every reference row with a metric of the table), in the table's units."""
    protocol = table.rows[0].protocol if table.rows else "pooled"
    keys = {c.key for c in table.columns}
    directions = {c.key: c.higher_is_better for c in table.delta_columns}
    for ref in refs:
        lines = [ReferenceLine(ref, r, ref.values(r, protocol)) for r in ref.rows if keys & set(r.raw)]
        if not lines:
            table.notes.append(f"Reference {ref.name}: no metric in common with this table.")
            continue
        base = table.baseline_reference
        for line in lines:
            if base is not None and base.reference.name == ref.name:
                shared = {
                    k: h for k, h in directions.items() if k in line.values and k in base.values and base.values[k] != 0
                }
                line.delta = delta_m({k: line.values[k] for k in shared}, base.values, shared)
        table.references += lines
        if ref.meta.get("dataset") and ref.meta["dataset"] != table.dataset:
            table.notes.append(
                f"Reference rows [{ref.name}] are published {ref.meta['dataset']} results, not "
                f"{table.dataset}: shown for scale, not comparable number for number."
            )
        if ref.protocol != protocol:
            table.notes.append(
                f"Reference rows [{ref.name}] use protocol {ref.meta.get('protocol')}, the runs {protocol}."
            )


def _add_significance(table: ResultsTable, source: str, last: int) -> None:
    """Welch's t-test of each row's per-seed metrics and delta_m against its baseline row's."""
    import warnings

    from scipy.stats import ttest_ind

    baselines = [r for r in table.rows if r.is_baseline]
    if not baselines:
        return
    for row in table.rows:
        if row.is_baseline or row.n < 2 or row.baseline_mean is None:
            continue
        base = next((b for b in baselines if b.mean is row.baseline_mean), None)
        if base is None or base.n < 2:
            continue
        with warnings.catch_warnings():  # identical seeds: scipy warns, the p-value is still defined or NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            _welch(row, base, table.columns, source, last, ttest_ind)


def _welch(row: Row, base: Row, columns: list[Column], source: str, last: int, ttest_ind) -> None:
    """Fill ``row.pvalues`` with Welch's two-sided p-values against ``base`` (per metric, delta_m)."""

    def pvalue(a: list[float], b: list[float]) -> float:
        if sample_std(a) <= 1e-12 * max(1.0, abs(a[0])) and sample_std(b) <= 1e-12 * max(1.0, abs(b[0])):
            return 1.0 if math.isclose(a[0], b[0], rel_tol=1e-9, abs_tol=1e-12) else 0.0  # no spread at all
        return float(ttest_ind(a, b, equal_var=False).pvalue)

    mine = [r.values(source, last) for r in row.runs]
    theirs = [r.values(source, last) for r in base.runs]
    for col in columns:
        a = [v[col.key] for v in mine if col.key in v]
        b = [v[col.key] for v in theirs if col.key in v]
        if len(a) > 1 and len(b) > 1:
            row.pvalues[col.key] = pvalue(a, b)
    if len(base.deltas) > 1 and len(row.deltas) > 1:
        row.pvalues["delta_m"] = pvalue(row.deltas, base.deltas)


def _add_deltas(table: ResultsTable, baseline: str, source: str, last: int) -> None:
    """delta_m of every run against the matching baseline row's seed-mean (same non-model settings)."""
    candidates = [r for r in table.rows if r.arch == baseline]
    if not candidates:
        table.notes.append(f"No {arch_label(baseline)} ({baseline}) run in this experiment, so no Δm column.")
        return
    table.baseline = arch_label(baseline)
    directions = {c.key: c.higher_is_better for c in table.delta_columns}

    def shared(setting: dict[str, Any]) -> dict[str, Any]:
        """The setting keys a baseline must match: those outside model.* and weighting.*."""
        return {k: v for k, v in setting.items() if not k.startswith(("model.", "weighting."))}

    unmatched: list[str] = []
    dropped: set[str] = set()
    for row in table.rows:
        matches = [b for b in candidates if shared(b.setting) == shared(row.setting)]
        if not matches:
            unmatched.append(row.label)
            continue
        base = min(matches, key=lambda b: (b.weighting != "equal", b.weighting))
        base.is_baseline = True
        row.baseline_mean = base.mean
        higher = {
            k: h for k, h in directions.items() if math.isfinite(base.mean.get(k, math.nan)) and base.mean[k] != 0
        }
        dropped.update(k for k in directions if k not in higher)
        row.deltas = _run_deltas(row.runs, base.mean, higher, source, last)
    if dropped:
        table.notes.append("Δm leaves out " + ", ".join(sorted(dropped)) + " (baseline value 0 or missing).")
    if unmatched:
        table.notes.append("No baseline run with the same settings for: " + "; ".join(unmatched) + ".")


def _run_deltas(
    runs: list[Run], base: dict[str, float], higher: dict[str, bool], source: str, last: int
) -> list[float]:
    """delta_m of each run against ``base``; empty when some run has no values (e.g. no best epoch)."""
    values = [r.values(source, last) for r in runs]
    if not all(any(k in v for k in higher) for v in values):
        return []
    return [delta_m(v, base, higher) for v in values]
