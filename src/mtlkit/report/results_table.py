"""The results table's data: metric columns, rows of seeds, published reference lines, and the table itself
with its paper layout (:meth:`ResultsTable.document_table`), caption, flat records and JSON.

:mod:`mtlkit.report.table` builds these from runs (grouping, delta_m, significance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mtlkit.metrics.protocols import describe
from mtlkit.report.document import Cell, Table
from mtlkit.report.numbers import _argbest, decimals, fmt_delta, fmt_value, sample_std
from mtlkit.report.reference import Reference, ReferenceRow
from mtlkit.report.runs import SINGLE_TASK_ARCHS, Run
from mtlkit.tasks import Task

#: significance level of the Welch t-tests against the baseline row
ALPHA = 0.05
#: mark of a difference from the baseline that is not significant at ALPHA
NOT_SIGNIFICANT = "†"
#: mark on the header of a column shown but left out of Δm (a task kind's ``reported_metrics``); not
#: NOT_SIGNIFICANT's dagger, which marks cells
NOT_IN_DELTA = "‡"


def arch_label(arch: str) -> str:
    """An architecture's name in tables: its class's ``label`` (the registered name when unset or unregistered)."""
    from mtlkit.registry import ARCHITECTURES

    return (ARCHITECTURES.get(arch).label or arch) if arch in ARCHITECTURES else arch


@dataclass
class Column:
    """One metric column: ``task/metric``, its better direction, and whether Δm counts it.

    ``in_delta`` is True for a task's ``metrics`` (Δm, best-epoch selection) and False for its kind's
    ``reported_metrics``: shown, bold where best and Welch-tested like any column, but never in Δm; the
    header carries :data:`NOT_IN_DELTA`.
    """

    key: str
    task: str
    metric: str
    higher_is_better: bool
    #: the metric's short name (its task kind's ``metric_labels``; the metric key when unset)
    text: str = ""
    #: False for a column shown but left out of Δm (a task kind's ``reported_metrics``)
    in_delta: bool = True

    @property
    def label(self) -> str:
        """Header text: the metric's short name (marked when not in Δm) and its better direction."""
        arrow = "↑" if self.higher_is_better else "↓"
        mark = "" if self.in_delta else NOT_IN_DELTA
        return f"{self.text or self.metric}{mark} {arrow}"


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
        values = [r.results["params"] for r in self.runs if r.results and r.results.get("params") is not None]
        return int(values[0]) if values else None

    @property
    def params_ratio(self) -> float | None:
        """#P: parameters relative to one single-task network (from results.json)."""
        values = [
            r.results["params_ratio"] for r in self.runs if r.results and r.results.get("params_ratio") is not None
        ]
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
        return arch_label(self.arch)

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
    def delta_columns(self) -> list[Column]:
        """The columns Δm is computed over: every task's ``metrics`` (not the shown-only ones)."""
        return [c for c in self.columns if c.in_delta]

    @property
    def shown_only(self) -> list[Column]:
        """The columns shown but left out of Δm (task kinds' ``reported_metrics`` some run logged)."""
        return [c for c in self.columns if not c.in_delta]

    @property
    def significance_tested(self) -> bool:
        """True when some row has a Welch test against the baseline."""
        return any(r.pvalues for r in self.rows)

    @property
    def title(self) -> str:
        """Dataset and tasks (with classes) of the experiment."""
        parts = [Task.from_dict(t).table_label() for t in self.tasks]
        return f"{self.dataset}: " + ", ".join(parts)

    def group_labels(self) -> list[str]:
        """The heading over each task's columns: its kind's ``column_label`` (the paper's "Segmentation",
        ...) when no other task of the table has that heading, else the task's name."""
        tasks = [Task.from_dict(t) for t in self.tasks]
        labels = [t.column_label() for t in tasks]
        return [label if labels.count(label) == 1 else t.name for t, label in zip(tasks, labels)]

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
                "table": self.key,
                "dataset": self.dataset,
                "arch": row.arch,
                "weighting": row.weighting,
                "setting": row.setting_text,
                "seeds": " ".join(str(s) for s in row.seeds),
                "n": row.n,
                "params": row.params,
                "params_ratio": row.params_ratio,
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
            rec = {
                "table": self.key,
                "dataset": ref.reference.meta.get("dataset"),
                "arch": ref.row.arch,
                "weighting": ref.row.weighting,
                "setting": f"reference {ref.reference.name}: {ref.row.name}",
                "params_ratio": ref.row.params_ratio,
            }
            rec.update({col.key: ref.values.get(col.key) for col in self.columns})
            rec["delta_m"] = ref.delta
            rec["protocol"] = ref.reference.protocol
            out.append(rec)
        return out

    def to_json(self) -> dict[str, Any]:
        """The table as plain data: tasks, columns with directions, rows with per-run values.

        A column shown but not in Δm has ``"in_delta": false``; a column without the key is in Δm (as in
        every ``tables.json`` written before such columns existed)."""
        return {
            "key": self.key,
            "dataset": self.dataset,
            "title": self.title,
            "source": self.source,
            "baseline": self.baseline,
            "notes": self.notes,
            "tasks": self.tasks,
            "columns": [
                {
                    "key": c.key,
                    "task": c.task,
                    "metric": c.metric,
                    "higher_is_better": c.higher_is_better,
                    **({} if c.in_delta else {"in_delta": False}),
                }
                for c in self.columns
            ],
            "rows": [
                {
                    **rec,
                    "pvalues": row.pvalues,
                    "per_run": [
                        {"path": str(r.path), "seed": r.seed, "values": r.values(*_src(self.source)), "delta_m": d}
                        for r, d in zip(row.runs, row.deltas if row.deltas else [None] * row.n)
                    ],
                }
                for rec, row in zip(self.records(), self.rows)
            ],
            "references": [
                {
                    "reference": ref.reference.name,
                    "row": ref.row.name,
                    "source": ref.reference.source,
                    "values": ref.values,
                    "delta_m": ref.delta,
                }
                for ref in self.references
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
        for task, label in zip(self.tasks, self.group_labels()):
            cols = [c for c in self.columns if c.task == task["name"]]
            groups.append((label, len(cols)))
            headers += [c.label for c in cols]
        if self.has_delta:
            groups.append(("", 1))
            headers.append("Δm % ↑")
        places = {
            c.key: decimals([r.mean.get(c.key) for r in self.rows] + [ref.values.get(c.key) for ref in self.references])
            for c in self.columns
        }
        rows = []
        for i, row in enumerate(self.rows):
            cells = [
                Cell(
                    f"{row.params_ratio:.2f}" if row.params_ratio is not None else "–",
                    title=f"{row.params:,} parameters" if row.params is not None else None,
                ),
                Cell(row.arch_label),
                Cell(row.weighting_label),
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
                cells.append(
                    Cell(fmt_value(v, places[col.key]), bold=i in best[col.key], title=tip, extra=extra or None)
                )
            if self.has_delta:
                mark = NOT_SIGNIFICANT if row.not_significant("delta_m") else None
                cells.append(Cell(fmt_delta(row.delta, row.delta_std), bold=i in best["delta_m"], extra=mark))
            rows.append(cells)
        for ref in self.references:
            cells = [
                Cell(f"{ref.row.params_ratio:g}" if ref.row.params_ratio is not None else "–", muted=True),
                Cell(ref.row.arch, muted=True, title=ref.reference.source),
                Cell(f"{ref.row.weighting} [{ref.reference.name}]", muted=True),
            ]
            cells += [Cell("–", muted=True) for _ in range(lead - 3)]
            cells += [Cell(fmt_value(ref.values.get(c.key), places[c.key]), muted=True) for c in self.columns]
            if self.has_delta:
                cells.append(Cell(fmt_delta(ref.delta, None), muted=True))
            rows.append(cells)
        return Table(
            headers,
            rows,
            self.caption(),
            groups,
            align=["r", "l", "l"] + ["l"] * (lead - 3) + ["r"] * (len(headers) - lead),
        )

    def caption(self) -> str:
        """What the numbers are: source, protocol, Δm baseline, spread, significance test, references."""
        protocols = "; ".join(f"`{p}`: {describe(p, self.protocol_batch)}" for p in self.protocols)
        caption = (
            f"Validation metrics ({self.source}); evaluation protocol {protocols}. #P = parameters "
            "relative to one single-task network; best per column in bold."
        )
        if self.multi_seed:
            caption += " Values: mean ± sample std over seeds."
        if self.has_delta:
            over = f"all metrics but the {NOT_IN_DELTA} ones" if self.shown_only else "all metrics"
            caption += f" Δm: mean relative gain over {over} vs the {self.baseline} row, in %."
        if self.shown_only:
            caption += (
                f" {NOT_IN_DELTA} shown, not in Δm: logged beside the task's metrics, left out of Δm and of "
                "best-epoch selection."
            )
        if self.significance_tested:
            caption += (
                f" {NOT_SIGNIFICANT}: difference from the baseline row not significant at the 5 % level "
                "(Welch's t-test over seeds, two-sided; rows with fewer than 2 seeds are not tested)."
            )
        for ref in dict.fromkeys(r.reference.name for r in self.references):
            reference = next(r.reference for r in self.references if r.reference.name == ref)
            caption += (
                f" Greyed rows: published numbers [{ref}] ({reference.meta.get('title', ref)}; "
                f"{reference.meta.get('setting', '')}), converted to this table's units; "
                f"source: {reference.source}"
            )
        return caption


def _src(source: str) -> tuple[str, int]:
    """``final``/``best``/``mean of last K epochs`` -> arguments of ``Run.values``."""
    if source.startswith("mean of last "):
        return "final", int(source.split()[3])
    return source, 1


def method_label(name: str) -> str:
    """How reports name a weighting method: its class's ``display_name``, else its class name
    (``pcgrad`` -> PCGrad, ``nash_mtl`` -> Nash-MTL); a name no registered class has, as it is."""
    from mtlkit.registry import WEIGHTINGS

    if name not in WEIGHTINGS:
        return name
    cls = WEIGHTINGS.get(name)
    return cls.display_name or cls.__name__
