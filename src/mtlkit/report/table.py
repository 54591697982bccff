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
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from mtlkit.report.document import Cell, Table, slug
from mtlkit.report.runs import SINGLE_TASK_ARCHS, Run, order_key
from mtlkit.tasks import Task

#: config keys that never make two runs different rows (bookkeeping, hardware, seeds)
IGNORED_KEYS = (
    "name", "out_dir", "seed", "dataset.root", "train.progress", "train.tensorboard", "train.num_workers",
    "train.device", "train.eval_batch_size", "train.compile", "train.channels_last",
)
ARCH_LABELS = {
    "single": "Single-Task", "stan": "STAN", "split_wide": "Split, Wide", "split_deep": "Split, Deep",
    "dense": "Dense", "cross_stitch": "Cross-Stitch", "mtan": "MTAN",
}
WEIGHTING_LABELS = {"equal": "Equal", "uncertainty": "Uncert.", "dwa": "DWA"}
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
        return WEIGHTING_LABELS.get(self.weighting, self.weighting)

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
            rec["baseline"] = row.is_baseline
            rec["runs"] = " ".join(str(r.path) for r in row.runs)
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
                {**rec, "per_run": [{"path": str(r.path), "seed": r.seed, "values": r.values(*_src(self.source)),
                                     "delta_m": d}
                                    for r, d in zip(row.runs, row.deltas or [None] * row.n)]}
                for rec, row in zip(self.records(), self.rows)
            ],
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
                tip = f"± {row.std[col.key]:.4g} over {row.n} seeds" if col.key in row.std else None
                cells.append(Cell(fmt_value(v), bold=i in best[col.key], title=tip))
            if self.has_delta:
                cells.append(Cell(fmt_delta(row.delta, row.delta_std), bold=i in best["delta_m"]))
            rows.append(cells)
        caption = (f"Validation metrics ({self.source}); #P = parameters relative to one single-task network; "
                   "best per column in bold.")
        if self.has_delta:
            spread = " ± sample std over seeds" if self.multi_seed else ""
            caption += f" Δm: mean relative gain over all metrics vs the {self.baseline} row, in %{spread}."
        return Table(headers, rows, caption, groups, align=["r", "l", "l"] + ["l"] * (lead - 3) +
                     ["r"] * (len(headers) - lead))


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


def fmt_value(v: float | None) -> str:
    """A metric for the table: 4 decimals below 10, 2 below 100, 1 above; '–' when missing."""
    if v is None or not math.isfinite(v):
        return "–"
    a = abs(v)
    return f"{v:.4f}" if a < 10 else f"{v:.2f}" if a < 100 else f"{v:.1f}"


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
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _signature(run: Run) -> tuple:
    return (run.dataset, tuple((t["name"], t["kind"], int(t["channels"])) for t in run.tasks))


def table_key(dataset: str, tasks: list[dict[str, Any]]) -> str:
    """File-name friendly key of an experiment: dataset and tasks with their channels."""
    return slug(dataset + "-" + "-".join(f"{t['name']}{t['channels']}" for t in tasks))


def build_tables(runs: list[Run], source: str = "final", last: int = 1, baseline: str = "single") -> list[ResultsTable]:
    """Group finished runs into experiment tables and rows, average seeds, and compute delta_m."""
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
        skip = set(IGNORED_KEYS) | {"model.arch", "weighting.name"}
        keys = sorted({k for f in flat for k in f} - skip)
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
        _add_deltas(table, baseline, source, last)
        tables.append(table)
    return tables


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
        row.deltas = [delta_m(r.values(source, last), base.mean, higher) for r in row.runs]
    if dropped:
        table.notes.append("Δm leaves out " + ", ".join(sorted(dropped)) + " (baseline value 0 or missing).")
    if unmatched:
        table.notes.append("No baseline run with the same settings for: " + "; ".join(unmatched) + ".")


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
