"""The results table in the MTAN paper's layout, with delta_m against the single-task rows.

Runs are grouped into one table per experiment (dataset and task set, including each task's number
of classes), and within a table into rows by architecture, weighting method and any other config
key that differs between runs (the row's "setting"); seeds are averaged. Columns: #P (parameters
relative to one single-task network, from results.json), architecture, weighting, every metric of
every task with its better direction (↑ higher is better, ↓ lower), and

    delta_m = mean over every metric of every task of (-1)^l (M - M_b) / M_b * 100   (l = 1: lower is better)

of each seed's run against the single-task row's seed-mean (Maninis et al. 2019), reported as the
mean over seeds ± the sample standard deviation (ddof = 1) when a row has several seeds. The best
value of each column (direction respected; delta_m: highest) is bold.

With several seeds, every metric and delta_m of a row is compared with the baseline row by Welch's
t-test (unequal variances, two-sided, ``scipy.stats.ttest_ind(equal_var=False)``) over the seeds;
a difference that is not significant at the 5 % level is marked † (two constant samples: p = 1 when
equal, 0 when not). The baseline may also be a
published row (``reference:NAME/ROW``, see :mod:`mtlkit.report.reference`); published tables can be
added as greyed reference rows, converted to the units of the runs' evaluation protocol.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.metrics.protocols import describe
from mtlkit.records import HASH_IGNORED
from mtlkit.report.document import Cell, Table, slug
from mtlkit.report.reference import Reference, ReferenceRow, load_reference
from mtlkit.report.runs import SINGLE_TASK_ARCHS, Run, order_key
from mtlkit.tasks import Task

#: significance level of the Welch t-tests against the baseline row
ALPHA = 0.05
#: mark of a difference from the baseline that is not significant at ALPHA
NOT_SIGNIFICANT = "†"

#: config keys (and the sections under them) that never make two runs different rows: those that cannot
#: change results (:data:`mtlkit.records.HASH_IGNORED`, one list), the run's name and its seed
IGNORED_KEYS = ("name", "seed", *HASH_IGNORED)
ARCH_LABELS = {
    "single": "Single-Task", "stan": "STAN", "split_wide": "Split, Wide", "split_deep": "Split, Deep",
    "dense": "Dense", "cross_stitch": "Cross-Stitch", "mtan": "MTAN",
}
TASK_LABELS = {"segmentation": "Segmentation", "depth": "Depth", "normal": "Surface Normal"}


@dataclass
class Column:
    """One metric column: ``task/metric`` and its better direction."""

    key: str
    task: str
    metric: str
    higher_is_better: bool
    #: the metric's short name (its task kind's ``metric_labels``; the metric key when unset)
    text: str = ""

    @property
    def label(self) -> str:
        """Header text: the metric's short name and its better direction."""
        arrow = "↑" if self.higher_is_better else "↓"
        return f"{self.text or self.metric} {arrow}"


@dataclass
class Row:
    """Runs of one architecture x weighting x setting (several seeds), with their seed statistics."""

    arch: str
    weighting: str
    setting: dict[str, Any]
    runs: list[Run]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    deltas: list[float] = field(default_factory=list)
    is_baseline: bool = False
    baseline_mean: dict[str, float] | None = None
    pvalues: dict[str, float] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        """The evaluation protocol of the row's runs (the first run's; rows never mix protocols)."""
        return self.runs[0].protocol if self.runs else "pooled"

    def not_significant(self, key: str) -> bool:
        """True when the Welch test against the baseline row gave p >= ALPHA for ``key`` (or delta_m)."""
        p = self.pvalues.get(key)
        return p is not None and math.isfinite(p) and p >= ALPHA

    @property
    def n(self) -> int:
        """Number of runs (seeds) in the row."""
        return len(self.runs)

    @property
    def seeds(self) -> list[int | None]:
        """The runs' seeds, in row order."""
        return [r.seed for r in self.runs]

    @property
    def params(self) -> int | None:
        """Parameter count (from results.json)."""
        values = [r.results.get("params") for r in self.runs if r.results and r.results.get("params") is not None]
        return int(values[0]) if values else None

    @property
    def params_ratio(self) -> float | None:
        """#P: parameters relative to one single-task network (from results.json)."""
        values = [r.results.get("params_ratio") for r in self.runs
                  if r.results and r.results.get("params_ratio") is not None]
        return float(values[0]) if values else None

    @property
    def delta(self) -> float | None:
        """Mean delta_m over the row's seeds (None without a baseline)."""
        return sum(self.deltas) / len(self.deltas) if self.deltas else None

    @property
    def delta_std(self) -> float | None:
        """Sample std of delta_m over seeds (None with fewer than two)."""
        return sample_std(self.deltas) if len(self.deltas) > 1 else None

    @property
    def arch_label(self) -> str:
        """The architecture as the paper names it."""
        return ARCH_LABELS.get(self.arch, self.arch)

    @property
    def weighting_label(self) -> str:
        """The weighting as the paper names it; "n.a." for single-task networks with equal weights."""
        if self.arch in SINGLE_TASK_ARCHS and self.weighting == "equal":
            return "n.a."
        return method_label(self.weighting)

    @property
    def setting_text(self) -> str:
        """The row's other differing config keys as ``key=value`` text."""
        return ", ".join(f"{k}={v}" for k, v in self.setting.items())

    @property
    def label(self) -> str:
        """Short legend label: architecture / weighting (and setting)."""
        text = self.arch_label if self.weighting_label == "n.a." else f"{self.arch_label} / {self.weighting_label}"
        return f"{text} ({self.setting_text})" if self.setting else text


@dataclass
class ReferenceLine:
    """A published row shown greyed in a table, in the units of the table's protocol."""

    reference: Reference
    row: ReferenceRow
    values: dict[str, float]
    delta: float | None = None

    @property
    def label(self) -> str:
        """The row as printed, with the reference's name."""
        return f"{self.row.name} [{self.reference.name}]"


@dataclass
class ResultsTable:
    """One experiment's table: its tasks, metric columns and rows, best cells and delta_m baseline."""

    key: str
    dataset: str
    tasks: list[dict[str, Any]]
    columns: list[Column]
    rows: list[Row]
    source: str
    baseline: str | None = None
    notes: list[str] = field(default_factory=list)
    references: list[ReferenceLine] = field(default_factory=list)
    baseline_reference: ReferenceLine | None = None

    @property
    def protocols(self) -> list[str]:
        """The evaluation protocols of the table's rows, in row order without repeats."""
        return list(dict.fromkeys(r.protocol for r in self.rows))

    @property
    def protocol_batch(self) -> int | None:
        """The batch size of the MTAN protocols' batch means (from the first run that recorded it)."""
        for row in self.rows:
            for run in row.runs:
                b = ((run.results or {}).get("eval") or {}).get("batch_size")
                if b is not None:
                    return int(b)
        return None

    @property
    def significance_tested(self) -> bool:
        """True when some row has a Welch test against the baseline."""
        return any(r.pvalues for r in self.rows)

    @property
    def title(self) -> str:
        """Dataset and tasks (with classes) of the experiment."""
        parts = [Task.from_dict(t).table_label() for t in self.tasks]
        return f"{self.dataset}: " + ", ".join(parts)

    @property
    def has_delta(self) -> bool:
        """True when some row has delta_m values."""
        return any(r.deltas for r in self.rows)

    @property
    def multi_seed(self) -> bool:
        """True when some row averages several seeds."""
        return any(r.n > 1 for r in self.rows)

    @property
    def has_setting(self) -> bool:
        """True when rows differ in keys other than architecture, weighting and seed."""
        return any(r.setting for r in self.rows)

    def best(self) -> dict[str, set[int]]:
        """Column key (or ``delta_m``) -> indices of the rows holding the best value (ties all count)."""
        out: dict[str, set[int]] = {}
        for col in self.columns:
            out[col.key] = _argbest([r.mean.get(col.key) for r in self.rows], col.higher_is_better)
        out["delta_m"] = _argbest([r.delta for r in self.rows], True)
        return out

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per row (CSV/JSON): names, #P, seeds, every metric's mean and std, delta_m."""
        out = []
        for row in self.rows:
            rec: dict[str, Any] = {
                "table": self.key, "dataset": self.dataset, "arch": row.arch, "weighting": row.weighting,
                "setting": row.setting_text, "seeds": " ".join(str(s) for s in row.seeds), "n": row.n,
                "params": row.params, "params_ratio": row.params_ratio,
            }
            for col in self.columns:
                rec[col.key] = row.mean.get(col.key)
                rec[f"{col.key} std"] = row.std.get(col.key)
            rec["delta_m"] = row.delta
            rec["delta_m std"] = row.delta_std
            rec["delta_m p"] = row.pvalues.get("delta_m")
            rec["baseline"] = row.is_baseline
            rec["protocol"] = row.protocol
            rec["runs"] = " ".join(str(r.path) for r in row.runs)
            out.append(rec)
        for ref in self.references:
            rec = {"table": self.key, "dataset": ref.reference.meta.get("dataset"), "arch": ref.row.arch,
                   "weighting": ref.row.weighting, "setting": f"reference {ref.reference.name}: {ref.row.name}",
                   "params_ratio": ref.row.params_ratio}
            rec.update({col.key: ref.values.get(col.key) for col in self.columns})
            rec["delta_m"] = ref.delta
            rec["protocol"] = ref.reference.protocol
            out.append(rec)
        return out

    def to_json(self) -> dict[str, Any]:
        """The table as plain data: tasks, columns with directions, rows with per-run values."""
        return {
            "key": self.key, "dataset": self.dataset, "title": self.title, "source": self.source,
            "baseline": self.baseline, "notes": self.notes, "tasks": self.tasks,
            "columns": [{"key": c.key, "task": c.task, "metric": c.metric, "higher_is_better": c.higher_is_better}
                        for c in self.columns],
            "rows": [
                {**rec, "pvalues": row.pvalues,
                 "per_run": [{"path": str(r.path), "seed": r.seed, "values": r.values(*_src(self.source)),
                              "delta_m": d}
                             for r, d in zip(row.runs, row.deltas or [None] * row.n)]}
                for rec, row in zip(self.records(), self.rows)
            ],
            "references": [{"reference": ref.reference.name, "row": ref.row.name, "source": ref.reference.source,
                            "values": ref.values, "delta_m": ref.delta} for ref in self.references],
        }

    def document_table(self) -> Table:
        """The paper layout as a document table (grouped task headers, bold best, arrows)."""
        best = self.best()
        headers = ["#P", "Architecture", "Weighting"]
        groups: list[tuple[str, int]] = [("", 3)]
        if self.has_setting:
            headers.append("Setting")
            groups[0] = ("", 4)
        if self.multi_seed:
            headers.append("Seeds")
            groups[0] = ("", groups[0][1] + 1)
        lead = len(headers)
        for task in self.tasks:
            cols = [c for c in self.columns if c.task == task["name"]]
            groups.append((TASK_LABELS.get(task["name"], task["name"]), len(cols)))
            headers += [c.label for c in cols]
        if self.has_delta:
            groups.append(("", 1))
            headers.append("Δm % ↑")
        places = {c.key: decimals([r.mean.get(c.key) for r in self.rows] + [ref.values.get(c.key)
                                                                              for ref in self.references])
                  for c in self.columns}
        rows = []
        for i, row in enumerate(self.rows):
            cells = [
                Cell(f"{row.params_ratio:.2f}" if row.params_ratio is not None else "–",
                     title=f"{row.params:,} parameters" if row.params is not None else None),
                Cell(row.arch_label), Cell(row.weighting_label),
            ]
            if self.has_setting:
                cells.append(Cell(row.setting_text or "–"))
            if self.multi_seed:
                cells.append(Cell(str(row.n), title="seeds " + ", ".join(str(s) for s in row.seeds)))
            for col in self.columns:
                v = row.mean.get(col.key)
                extra = f"± {fmt_value(row.std[col.key], places[col.key])}" if col.key in row.std else ""
                extra += NOT_SIGNIFICANT if row.not_significant(col.key) else ""
                p = row.pvalues.get(col.key)
                tip = f"Welch p = {p:.3g} vs the baseline row" if p is not None else None
                cells.append(Cell(fmt_value(v, places[col.key]), bold=i in best[col.key], title=tip,
                                  extra=extra or None))
            if self.has_delta:
                mark = NOT_SIGNIFICANT if row.not_significant("delta_m") else None
                cells.append(Cell(fmt_delta(row.delta, row.delta_std), bold=i in best["delta_m"], extra=mark))
            rows.append(cells)
        for ref in self.references:
            cells = [Cell(f"{ref.row.params_ratio:g}" if ref.row.params_ratio is not None else "–", muted=True),
                     Cell(ref.row.arch, muted=True, title=ref.reference.source),
                     Cell(f"{ref.row.weighting} [{ref.reference.name}]", muted=True)]
            cells += [Cell("–", muted=True) for _ in range(lead - 3)]
            cells += [Cell(fmt_value(ref.values.get(c.key), places[c.key]), muted=True) for c in self.columns]
            if self.has_delta:
                cells.append(Cell(fmt_delta(ref.delta, None), muted=True))
            rows.append(cells)
        return Table(headers, rows, self.caption(), groups, align=["r", "l", "l"] + ["l"] * (lead - 3) +
                     ["r"] * (len(headers) - lead))

    def caption(self) -> str:
        """What the numbers are: source, protocol, Δm baseline, spread, significance test, references."""
        protocols = "; ".join(f"`{p}`: {describe(p, self.protocol_batch)}" for p in self.protocols)
        caption = (f"Validation metrics ({self.source}); evaluation protocol {protocols}. #P = parameters "
                   "relative to one single-task network; best per column in bold.")
        if self.multi_seed:
            caption += " Values: mean ± sample std over seeds."
        if self.has_delta:
            caption += f" Δm: mean relative gain over all metrics vs the {self.baseline} row, in %."
        if self.significance_tested:
            caption += (f" {NOT_SIGNIFICANT}: difference from the baseline row not significant at the 5 % level "
                        "(Welch's t-test over seeds, two-sided; rows with fewer than 2 seeds are not tested).")
        for ref in dict.fromkeys(r.reference.name for r in self.references):
            reference = next(r.reference for r in self.references if r.reference.name == ref)
            caption += (f" Greyed rows: published numbers [{ref}] ({reference.meta.get('title', ref)}; "
                        f"{reference.meta.get('setting', '')}), converted to this table's units; "
                        f"source: {reference.source}")
        return caption


def _src(source: str) -> tuple[str, int]:
    """``final``/``best``/``mean of last K epochs`` -> arguments of ``Run.values``."""
    if source.startswith("mean of last "):
        return "final", int(source.split()[3])
    return source, 1


def _argbest(values: list[float | None], higher: bool) -> set[int]:
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return set()
    target = max(present) if higher else min(present)
    tol = 1e-12 * max(1.0, abs(target))
    return {i for i, v in enumerate(values) if v is not None and abs(v - target) <= tol}


def sample_std(values: list[float]) -> float:
    """Standard deviation with Bessel's correction (ddof = 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def method_label(name: str) -> str:
    """How reports name a weighting method: its class's ``display_name``, else its class name
    (``pcgrad`` -> PCGrad, ``nash_mtl`` -> Nash-MTL); a name no registered class has, as it is."""
    from mtlkit.registry import WEIGHTINGS

    if name not in WEIGHTINGS:
        return name
    cls = WEIGHTINGS.get(name)
    return cls.display_name or cls.__name__


def decimals(values: list[float | None]) -> int:
    """The decimals of a table column: 4 when its largest magnitude is below 10, 2 below 100, else 1.

    One count for the whole column, so its numbers line up (12.40 above 4.34, not 4.3444).
    """
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    return 4 if top < 10 else 2 if top < 100 else 1


def fmt_value(v: float | None, places: int | None = None) -> str:
    """A metric for the table with ``places`` decimals (None: :func:`decimals` of the value alone); '–' when
    missing."""
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{decimals([v]) if places is None else places}f}"


def fmt_delta(mean: float | None, std: float | None) -> str:
    """A delta_m in percent with sign, and its spread when there is one."""
    if mean is None:
        return "–"
    if round(mean, 2) == 0:
        mean = 0.0
    return f"{mean:+.2f} ± {std:.2f}" if std is not None else f"{mean:+.2f}"


def delta_m(values: dict[str, float], baseline: dict[str, float], higher_is_better: dict[str, bool]) -> float:
    """Multi-task gain in percent over the metrics present in both dicts, via ``mtlkit.metrics.delta_m``."""
    from mtlkit.metrics import delta_m as metric_delta_m

    keys = [k for k in higher_is_better if k in values and k in baseline]
    return float(metric_delta_m({k: values[k] for k in keys}, {k: baseline[k] for k in keys},
                                {k: higher_is_better[k] for k in keys}))


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


def build_tables(runs: list[Run], source: str = "final", last: int = 1, baseline: str = "single",
                 references: list[str] | None = None) -> list[ResultsTable]:
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
        columns = [Column(f"{t['name']}/{m}", t["name"], m, bool(h), Task.from_dict(t).metric_label(m))
                   for t in tasks for m, h in t["metrics"].items()]
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


def _reference_baseline(baseline: str) -> tuple[Reference, ReferenceRow] | None:
    """``(reference, row)`` of a ``reference:NAME/ROW`` baseline, None for an architecture name."""
    if not baseline.startswith("reference:"):
        return None
    name, sep, row = baseline[len("reference:"):].partition("/")
    if not sep or not name or not row:
        raise ConfigError(f"--baseline {baseline!r}: expected reference:NAME/ROW (e.g. reference:mtan_paper/One Task)")
    ref = load_reference(name)
    return ref, ref.row(row)


def _note_missing_best(table: ResultsTable) -> None:
    """Say why a table built from ``best`` values has none: runs without model selection."""
    notes = {(r.results or {}).get("best_note") for row in table.rows for r in row.runs
             if not (r.results or {}).get("best")}
    if notes:
        table.notes.append("Some runs have no best epoch, so --use best leaves them empty: "
                           + "; ".join(sorted(n or "results.json has no best values" for n in notes)) + ".")


def _add_reference_deltas(table: ResultsTable, ref: Reference, base: ReferenceRow, source: str, last: int) -> None:
    """delta_m of every run against a published row, converted to each row's protocol units."""
    directions = {c.key: c.higher_is_better for c in table.columns}
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
    table.notes.append(f"Δm against the published row {base.name} [{ref.name}] ({ref.source})"
                       + (f"; over {', '.join(shared)} only (the reference lacks {', '.join(missing)})."
                          if missing else "."))
    if ref.protocol not in table.protocols:
        table.notes.append(f"The reference row was evaluated under protocol {ref.meta.get('protocol')}, the runs "
                           f"under {', '.join(table.protocols)}: the Δm mixes protocols.")


def _add_references(table: ResultsTable, refs: list[Reference]) -> None:
    """Greyed published rows (every reference row with a metric of the table), in the table's units."""
    protocol = table.rows[0].protocol if table.rows else "pooled"
    keys = {c.key for c in table.columns}
    directions = {c.key: c.higher_is_better for c in table.columns}
    for ref in refs:
        lines = [ReferenceLine(ref, r, ref.values(r, protocol)) for r in ref.rows if keys & set(r.raw)]
        if not lines:
            table.notes.append(f"Reference {ref.name}: no metric in common with this table.")
            continue
        base = table.baseline_reference
        for line in lines:
            if base is not None and base.reference.name == ref.name:
                shared = {k: directions[k] for k in keys if k in line.values and k in base.values
                          and base.values[k] != 0}
                line.delta = delta_m({k: line.values[k] for k in shared}, base.values, shared)
        table.references += lines
        if ref.meta.get("dataset") and ref.meta["dataset"] != table.dataset:
            table.notes.append(f"Reference rows [{ref.name}] are published {ref.meta['dataset']} results, not "
                               f"{table.dataset}: shown for scale, not comparable number for number.")
        if ref.protocol != protocol:
            table.notes.append(f"Reference rows [{ref.name}] use protocol {ref.meta.get('protocol')}, the runs "
                               f"{protocol}.")


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
        table.notes.append(f"No {ARCH_LABELS.get(baseline, baseline)} ({baseline}) run in this experiment, "
                           "so no Δm column.")
        return
    table.baseline = ARCH_LABELS.get(baseline, baseline)
    directions = {c.key: c.higher_is_better for c in table.columns}

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
        higher = {k: h for k, h in directions.items() if math.isfinite(base.mean.get(k, math.nan))
                  and base.mean[k] != 0}
        dropped.update(k for k in directions if k not in higher)
        row.deltas = _run_deltas(row.runs, base.mean, higher, source, last)
    if dropped:
        table.notes.append("Δm leaves out " + ", ".join(sorted(dropped)) + " (baseline value 0 or missing).")
    if unmatched:
        table.notes.append("No baseline run with the same settings for: " + "; ".join(unmatched) + ".")


def _run_deltas(runs: list[Run], base: dict[str, float], higher: dict[str, bool], source: str,
                last: int) -> list[float]:
    """delta_m of each run against ``base``; empty when some run has no values (e.g. no best epoch)."""
    values = [r.values(source, last) for r in runs]
    if not all(any(k in v for k in higher) for v in values):
        return []
    return [delta_m(v, base, higher) for v in values]


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
