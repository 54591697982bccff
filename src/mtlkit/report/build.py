"""Assemble a report from run/sweep folders: tables, figures, provenance -> report.md + report.html.

Output folder layout::

    report.md, report.html        the same document; the HTML embeds every figure (self-contained)
    tables.csv, tables.json       every results table (means, stds, delta_m, per-run values)
    provenance.json               per-run provenance and the report's own
    figures/*.png                 every figure
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.io import atomic_write_json, atomic_write_text, output_error
from mtlkit.report import html as html_writer
from mtlkit.report import markdown as md_writer
from mtlkit.report import plots
from mtlkit.report.document import (
    BulletList,
    Cell,
    Document,
    Figure,
    Note,
    Paragraph,
    Section,
    Table,
    file_slug,
    slug,
)
from mtlkit.report.provenance import fmt_duration, report_provenance, run_provenance
from mtlkit.report.results_table import arch_label
from mtlkit.report.runs import Collection, Run, collect
from mtlkit.report.table import ResultsTable, Row, build_tables, decimals, fmt_value, tables_csv
from mtlkit.tasks import Task

Loader = Callable[[Path], tuple]


@dataclass
class ReportOptions:
    """What to report: metric source, delta_m baseline, how many model-based figures."""

    source: str = "final"
    last: int | None = None  # None: the runs' eval.report_last (1 when they disagree or lack it)
    baseline: str = "single"
    references: list[str] = field(default_factory=list)
    attention_images: int = 2
    attention_runs: int = 2
    stitch_runs: int = 3
    models: bool = True
    title: str = "mtlkit report"
    argv: list[str] | None = None


@dataclass
class ReportFiles:
    """Paths of what ``make_report`` wrote."""

    out: Path
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)


def default_loader(run_dir: Path) -> tuple:
    """The trainer's ``load_run`` (best checkpoint, else last: runs without model selection), on CPU."""
    from mtlkit.train.trainer import load_run

    which = "best" if (Path(run_dir) / "checkpoints" / "best.pt").is_file() else "last"
    return load_run(run_dir, checkpoint=which, device="cpu")


def make_report(
    paths: list[Path], out: Path, options: ReportOptions | None = None, loader: Loader | None = None
) -> ReportFiles:
    """Read the runs under ``paths`` and write the report files into ``out``."""
    opts = options or ReportOptions()
    out = Path(out)
    col = collect([Path(p) for p in paths])
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(out / "figures", err) from None
    last = opts.last if opts.last is not None else _runs_report_last(col.runs, opts.source)
    tables = build_tables(col.runs, opts.source, last, opts.baseline, opts.references)
    builder = _Builder(out, opts, loader or default_loader, last=last)
    doc = builder.document(col, tables)

    data = [out / "tables.csv", out / "tables.json", out / "provenance.json"]
    atomic_write_text(data[0], tables_csv(tables))
    atomic_write_json(
        data[1], {"source": tables[0].source if tables else opts.source, "tables": [t.to_json() for t in tables]}
    )
    atomic_write_json(
        data[2], {"report": builder.provenance, "runs": [run_provenance(r) for r in col.runs], "missing": col.missing}
    )
    doc.sections.append(
        Section(
            "Files",
            [BulletList([f"`{p.relative_to(out).as_posix()}`" for p in data + builder.figures + builder.data])],
        )
    )
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md_writer.render(doc))
    atomic_write_text(html_path, html_writer.render(doc, out))
    return ReportFiles(out, md_path, html_path, builder.figures, data + builder.data)


class _Builder:
    """Builds the document's sections, writing figures into ``out/figures`` as it goes."""

    def __init__(self, out: Path, opts: ReportOptions, loader: Loader, last: int = 1) -> None:
        self.out, self.opts, self.loader, self.last = out, opts, loader, last
        self.figures: list[Path] = []
        #: the numbers behind some figures (figures/NAME.json)
        self.data: list[Path] = []
        self.provenance = report_provenance(opts.argv)
        self._models: dict[Path, tuple | Exception] = {}
        self._pixel_counts: dict[tuple[str, str], np.ndarray] = {}

    def data_file(self, path: Path, data: Any) -> None:
        """Write the numbers a figure plots next to it (``figures/NAME.json``), listed with the report's files."""
        atomic_write_json(path, data)
        self.data.append(path)

    def figure(self, path: Path, caption: str) -> Figure:
        """Register a written PNG and return its document figure (path relative to the report)."""
        self.figures.append(path)
        return Figure(path.relative_to(self.out), caption)

    def document(self, col: Collection, tables: list[ResultsTable]) -> Document:
        """The whole report document for the collected runs and their tables."""
        doc = Document(self.opts.title)
        finished = [r for r in col.runs if r.finished]
        total = sum(r.wall_time or 0.0 for r in col.runs)
        unfinished_time = sum(r.wall_time or 0.0 for r in col.runs if not r.finished)
        of_which = f" ({fmt_duration(unfinished_time)} of it in unfinished runs)" if unfinished_time else ""
        intro = (
            f"{len(col.runs)} run folders ({len(finished)} finished), "
            f"{len(tables)} experiment table{'s' if len(tables) != 1 else ''}; "
            f"total training time {fmt_duration(total)}{of_which}. Generated {self.provenance['generated']}."
        )
        if col.sweeps:
            intro += " Sweeps: " + ", ".join(f"`{s['name']}` ({s['runs']} runs)" for s in col.sweeps) + "."
        doc.intro.append(Paragraph(intro))
        problems = [r for r in col.runs if not r.finished]
        if problems or col.missing:
            doc.intro.append(
                Note(
                    f"{len(problems) + len(col.missing)} run(s) did not finish and are left out "
                    "of the tables; see 'Unfinished and failed runs'."
                )
            )
        diverged = [r for r in col.runs if r.non_finite]
        if diverged:
            doc.intro.append(
                Note(
                    "Non-finite (NaN/inf) values were logged by "
                    + "; ".join(
                        f"{r.name} ({', '.join(r.non_finite[:3])}{', ...' if len(r.non_finite) > 3 else ''})"
                        for r in diverged
                    )
                    + ": their numbers are not trustworthy."
                )
            )
        doc.sections.append(self.results_section(tables))
        complexity = self.complexity_section(tables)
        if complexity is not None:
            doc.sections.append(complexity)
        doc.sections.append(self.curves_section(tables, problems))
        doc.sections.append(self.weights_section(tables))
        doc.sections.append(self.stitch_section(tables))
        starved = self.data_starved_section(tables)
        if starved is not None:
            doc.sections.append(starved)
        doc.sections.append(self.attention_section(tables))
        if problems or col.missing:
            doc.sections.append(self.problems_section(problems, col.missing))
        doc.sections.append(self.provenance_section(col.runs))
        return doc

    # ------------------------------------------------------------------ tables

    def results_section(self, tables: list[ResultsTable]) -> Section:
        """One paper-layout table per experiment, its notes and a one-line summary."""
        sec = Section("Results")
        if not tables:
            sec.blocks.append(Note("No finished run (results.json with status 'finished') to tabulate."))
            return sec
        for t in tables:
            if len(tables) > 1:
                sec.blocks.append(Paragraph(f"**{t.title}**"))
            sec.blocks.append(t.document_table())
            sec.blocks += [Note(n) for n in t.notes]
            delta = self.delta_figure(t)
            if delta is not None:
                sec.blocks.append(delta)
            summary = _summary(t)
            if summary:
                sec.blocks.append(Paragraph(summary))
        return sec

    def delta_figure(self, t: ResultsTable) -> Figure | None:
        """Δm of every rated row (and published rows rated against a published baseline), with error bars."""
        bars = [
            {
                "label": r.label,
                "arch": r.arch,
                "delta": r.delta,
                "std": r.delta_std,
                "not_significant": r.not_significant("delta_m"),
            }
            for r in t.rows
            if r.delta is not None and not r.is_baseline
        ]
        bars += [
            {"label": ref.label, "arch": ref.row.arch, "delta": ref.delta, "std": None, "reference": True}
            for ref in t.references
            if ref.delta is not None
        ]
        if not bars:
            return None
        path = self.out / "figures" / f"delta_m_{t.key}.png"
        plots.plot_delta(bars, path, title=t.title, baseline=t.baseline or "")
        hatch = " Hatched: not significant at 5 % (Welch's t-test over seeds)." if t.significance_tested else ""
        return self.figure(
            path, f"{t.title}: Δm vs the {t.baseline} row per row, mean over seeds with ± sample std error bars.{hatch}"
        )

    # ------------------------------------------------------------------ complexity

    def complexity_section(self, tables: list[ResultsTable]) -> Section | None:
        """Performance vs number of classes when tables differ only in a task's number of classes."""
        groups: dict[tuple, list[ResultsTable]] = {}
        for t in tables:
            groups.setdefault((t.dataset, tuple(x["name"] for x in t.tasks)), []).append(t)
        blocks = []
        for (dataset, names), group in groups.items():
            varying = [i for i, _ in enumerate(names) if len({t.tasks[i]["channels"] for t in group}) > 1]
            if len(group) < 2 or not varying:
                continue
            vary = varying[0]
            series: dict[tuple, dict[str, Any]] = {}
            for t in sorted(group, key=lambda t: t.tasks[vary]["channels"]):
                classes = int(t.tasks[vary]["channels"])
                for row in t.rows:
                    s = series.setdefault(
                        (row.arch, row.weighting, row.setting_text),
                        {
                            "label": row.label,
                            "arch": row.arch,
                            "weighting": row.weighting,
                            "points": {},
                            "relative": {},
                        },
                    )
                    mains = {f"{x['name']}/{x['main_metric']}": bool(x["metrics"][x["main_metric"]]) for x in t.tasks}
                    s["points"][classes] = {k: row.mean[k] for k in mains if k in row.mean}
                    if row.baseline_mean is not None and not row.is_baseline:
                        s["relative"][classes] = {
                            k: (1 if hib else -1) * (row.mean[k] - row.baseline_mean[k]) / row.baseline_mean[k] * 100
                            for k, hib in mains.items()
                            if k in row.mean and row.baseline_mean.get(k) not in (None, 0.0)
                        }
            path = self.out / "figures" / f"complexity_{slug(dataset + '-' + '-'.join(names))}.png"
            plots.plot_complexity(
                list(series.values()),
                group[0].tasks,
                path,
                title=f"{dataset}: performance vs number of {names[vary]} classes",
            )
            blocks.append(
                self.figure(
                    path,
                    f"{dataset}: each task's main metric against the number of "
                    f"{names[vary]} classes (top) and its gain over the single-task "
                    "network (bottom, %, higher is better), per architecture.",
                )
            )
        if not blocks:
            return None
        return Section(
            "Task complexity",
            [
                Paragraph(
                    "As in MTAN section 4.1.5: the same architectures trained with more and more segmentation "
                    "classes. A method that shares well keeps its advantage over single-task networks as the "
                    "task gets harder."
                )
            ]
            + blocks,
        )

    # ------------------------------------------------------------------ curves and weights

    def curves_section(self, tables: list[ResultsTable], unfinished: list[Run]) -> Section:
        """Per experiment: training loss and validation main metric per epoch, one line per row.

        Unfinished runs with logged epochs join the table of their dataset and tasks (else a group of
        their own). Lines of one logged epoch have no curve: their values go in a table instead.
        """
        sec = Section("Training curves")
        groups = [
            _CurveGroup(t.title, t.key, t.dataset, t.tasks, [_line(row.label, row.runs, t.tasks) for row in t.rows])
            for t in tables
        ]
        for run in (r for r in unfinished if r.epochs):
            tasks = run.logged_tasks
            names = [x["name"] for x in tasks]
            group = next((g for g in groups if g.dataset == run.dataset and g.names == names), None)
            if group is None:
                title = f"{run.dataset}: " + ", ".join(names) + " (unfinished runs)"
                group = _CurveGroup(title, slug(title), run.dataset, tasks, [])
                groups.append(group)
            n = len(run.epochs)
            group.lines.append(
                _line(f"{run.name} ({run.status}, {n} epoch{'s' if n != 1 else ''})", [run], group.tasks)
            )
        for g in groups:
            curves = [ln for ln in g.lines if max(map(len, ln["series"].values()), default=0) > 1]
            single = [ln for ln in g.lines if max(map(len, ln["series"].values()), default=0) == 1]
            if curves:
                path = self.out / "figures" / f"curves_{g.key}.png"
                plots.plot_curves(curves, g.tasks, path, title=g.title)
                sec.blocks.append(
                    self.figure(
                        path,
                        f"{g.title}: training loss (left) and validation main "
                        "metric (right) per epoch, mean over seeds.",
                    )
                )
            if single:
                sec.blocks.append(_one_epoch_table(g, single))
        if not sec.blocks:
            sec.blocks.append(Note("No run logged an epoch."))
        return sec

    def weights_section(self, tables: list[ResultsTable]) -> Section:
        """Per experiment: task weights over epochs for the rows whose weights change."""
        sec = Section("Task weights")
        constant = []
        for t in tables:
            names = [x["name"] for x in t.tasks]
            panels = []
            for row in t.rows:
                series = {n: _seed_mean(row.runs, "weights", n) for n in names}
                values = [v for pts in series.values() for _, v in pts]
                if values and max(values) - min(values) > 1e-9:
                    panels.append({"label": row.label, "series": series})
                elif values:
                    constant.append(row.label)
            if panels:
                path = self.out / "figures" / f"weights_{t.key}.png"
                plots.plot_weights(panels, names, path, title=t.title)
                sec.blocks.append(
                    self.figure(
                        path,
                        f"{t.title}: each task's loss weight per epoch (mean over the epoch's steps and over seeds).",
                    )
                )
        if constant:
            sec.blocks.append(
                Paragraph("Constant task weights (not plotted): " + ", ".join(sorted(set(constant))) + ".")
            )
        if not sec.blocks:
            sec.blocks.append(Note("No task weights logged."))
        return sec

    # ------------------------------------------------------------------ model-based figures

    def load(self, run: Run) -> tuple:
        """The run's trained model via the loader (cached; an exception is re-raised on every use)."""
        if run.path not in self._models:
            try:
                self._models[run.path] = self.loader(run.path)
            except Exception as err:  # noqa: BLE001 - reported as a note, the report goes on
                self._models[run.path] = err
        got = self._models[run.path]
        if isinstance(got, Exception):
            raise got
        return got

    def stitch_section(self, tables: list[ResultsTable]) -> Section:
        """Learned cross-stitch alphas per stitch point of a few cross-stitch runs."""
        sec = Section("Cross-stitch alphas")
        picked = _pick(tables, "stitch", self.opts.stitch_runs, one_per_arch=False)
        if not picked:
            sec.blocks.append(Paragraph("No cross-stitch run in this report."))
            return sec
        if not self.opts.models:
            sec.blocks.append(Note("Skipped: model loading turned off (--no-models)."))
            return sec
        for t, row, run in picked:
            try:
                _, model, tasks, _ = self.load(run)
                names = [x.name for x in tasks]
                alphas = plots.alpha_matrices(model.stitch_alphas(), len(names))
            except Exception as err:  # noqa: BLE001
                sec.blocks.append(
                    Note(f"{run.name}: skipped, the model could not be loaded ({type(err).__name__}: {_short(err)}).")
                )
                continue
            path = self.out / "figures" / f"stitch_{file_slug(run.name)}.png"
            plots.plot_stitch_alphas(alphas, names, path, title=f"{row.label}: {run.name}")
            sec.blocks.append(
                self.figure(
                    path,
                    f"{row.label} ({t.title}): learned cross-stitch alphas at each "
                    "stitch point (row = the task whose features are mixed), and "
                    "the weight each task keeps for itself along the network.",
                )
            )
            profiles = plots.stitch_channel_alphas(model.stitch_alphas(), names)
            if any(len(p["alpha_s"]) > 1 for point in profiles.values() for p in point.values()):
                base = self.out / "figures" / f"stitch_channels_{file_slug(run.name)}"
                self.data_file(base.with_suffix(".json"), {"run": run.name, "tasks": names, "points": profiles})
                plots.plot_stitch_alpha_channels(
                    profiles, names, base.with_suffix(".png"), title=f"{row.label}: {run.name}"
                )
                sec.blocks.append(
                    self.figure(
                        base.with_suffix(".png"),
                        f"{row.label} ({t.title}), as Misra et al. Sec. 5.4 plot them: per stitch point (rows) and "
                        "task (columns), every channel's alpha_S (the weight the task keeps for its own features) "
                        "and alpha_D (the weight it takes from the other tasks), each sorted increasingly. alpha_S "
                        "well above alpha_D: the layer stays task-specific; close together: it shares.",
                    )
                )
        return sec

    def data_starved_section(self, tables: list[ResultsTable]) -> Section | None:
        """Misra et al. Sec. 6.3: per class, each row's IoU gain over the baseline row against the class's
        labelled training pixels, for tables with a baseline row and a task logging per-class IoU
        (``iou_<class>``, from the task's ``class_names``). Counts come from the baseline run's training
        split, read once per table through the run loader (the kind's ``class_counts``); None: no such table."""
        blocks: list[Any] = []
        for t in tables:
            base = next((r for r in t.rows if r.is_baseline), None)
            others = [r for r in t.rows if not r.is_baseline]
            if base is None or not others:
                continue
            for x in t.tasks:
                task = Task.from_dict(x)
                names = [str(n) for n in (task.options.get("class_names") or [])]
                keys = [f"{task.name}/iou_{n}" for n in names]
                base_iou = _class_means(base.runs, keys, self.opts.source, self.last)
                if not names or not any(k in base_iou for k in keys):
                    continue
                if not self.opts.models:
                    blocks.append(Note(f"{t.title}, {task.name}: skipped, model loading turned off (--no-models)."))
                    continue
                try:
                    pixels = self._class_pixels(base.runs[0], task.name)
                except Exception as err:  # noqa: BLE001 - reported as a note, the report goes on
                    blocks.append(
                        Note(
                            f"{t.title}, {task.name}: skipped, the training labels could not be counted "
                            f"({type(err).__name__}: {_short(err)})."
                        )
                    )
                    continue
                if len(pixels) != len(names):
                    blocks.append(Note(f"{t.title}, {task.name}: {len(pixels)} classes counted, {len(names)} named."))
                    continue
                rows = []
                bases = [r for r in t.rows if r.is_baseline]
                for row in others:
                    # the baseline row with the same settings (the one delta_m used), else the first
                    own = next((b for b in bases if b.mean is row.baseline_mean), base)
                    own_iou = base_iou if own is base else _class_means(own.runs, keys, self.opts.source, self.last)
                    iou = _class_means(row.runs, keys, self.opts.source, self.last)
                    gain = [100.0 * (iou[k] - own_iou[k]) if k in iou and k in own_iou else None for k in keys]
                    rows.append({"label": row.label, "arch": row.arch, "gain": gain, "baseline": own.label})
                several = len({r["baseline"] for r in rows}) > 1
                matched = (
                    f"the {arch_label(base.arch)} row with the same settings" if several else f"the {base.label} row"
                )
                data = {
                    "table": t.title,
                    "task": task.name,
                    "baseline": f"{arch_label(base.arch)} with the same settings" if several else base.label,
                    "classes": names,
                    "pixels": [int(p) for p in pixels],
                    "baseline_iou": [base_iou.get(k) for k in keys],
                    "rows": rows,
                }
                ranks = _rank_note(data)
                stem = self.out / "figures" / f"class_gain_{t.key}_{file_slug(task.name)}"
                self.data_file(stem.with_suffix(".json"), data)
                plots.plot_class_gain(data, stem.with_suffix(".png"), title=f"{t.title}: {task.name}")
                blocks.append(
                    self.figure(
                        stem.with_suffix(".png"),
                        f"{t.title}, {task.name}: per class, each row's IoU minus that of {matched} (points, "
                        "mean over seeds) against the class's labelled pixels in the training split (log scale). "
                        "Points high on the left: the rare classes gain most." + ranks,
                    )
                )
        if not blocks:
            return None
        return Section(
            "Data-starved classes",
            [
                Paragraph(
                    "As in the cross-stitch paper (Sec. 6.3, Fig. 6): does sharing help the classes with few "
                    "labels most? Each class's IoU gain over the baseline row against how many labelled "
                    "training pixels the class has. The plotted numbers are in the JSON file next to each figure."
                )
            ]
            + blocks,
        )

    def _class_pixels(self, run: Run, task_name: str) -> np.ndarray:
        """Labelled training pixels per class of ``task_name``, summed over the run's training split (cached per
        dataset config); a sample without the task's target (partial labels) adds nothing."""
        key = (repr(sorted(_dataset_section(run.config).items())), task_name)
        if key not in self._pixel_counts:
            _, _, tasks, builder = self.load(run)
            task = next(x for x in tasks if x.name == task_name)
            dataset = builder.dataset("train", train=False)
            total: np.ndarray | None = None
            for i in range(len(dataset)):
                target = dataset[i].get(task_name)
                if target is None:
                    continue
                counts = task.spec.class_counts(task, target)
                if counts is None:
                    raise ValueError(f"task {task_name!r} ({task.kind}) has no classes to count")
                total = counts if total is None else total + counts
            if total is None:
                raise ValueError(f"no training sample carries a {task_name!r} target")
            self._pixel_counts[key] = total
        return self._pixel_counts[key]

    def attention_section(self, tables: list[ResultsTable]) -> Section:
        """MTAN/STAN attention masks of a few validation images per task and block."""
        sec = Section("Attention masks")
        picked = _pick(tables, "attention", self.opts.attention_runs, one_per_arch=True)
        if not picked:
            sec.blocks.append(Paragraph("No MTAN or STAN run in this report."))
            return sec
        if not self.opts.models or self.opts.attention_images < 1:
            sec.blocks.append(Note("Skipped: model loading turned off."))
            return sec
        sec.blocks.append(
            Paragraph(
                "MTAN section 4.1.6: each task's soft-attention mask at every encoder and decoder block "
                "(mean over channels; 0 = feature suppressed, 1 = kept) beside the image, ground truth and "
                "prediction of a few validation images. Masks that differ between tasks show the shared "
                "features being selected per task."
            )
        )
        for t, row, run in picked:
            try:
                images = self._attention_data(run)
            except Exception as err:  # noqa: BLE001
                sec.blocks.append(
                    Note(
                        f"{run.name}: skipped, the model could not be loaded or run "
                        f"({type(err).__name__}: {_short(err)})."
                    )
                )
                continue
            for i, (image, rows) in enumerate(images):
                path = self.out / "figures" / f"attention_{file_slug(run.name)}_{i}.png"
                plots.plot_attention(image, rows, path, title=f"{row.label}: {run.name}, val image {i}")
                sec.blocks.append(self.figure(path, f"{row.label} ({t.title}), validation image {i}."))
        return sec

    def _attention_data(self, run: Run) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
        """Forward a few val images with recording on: per image, the per-task rows for the figure."""
        import torch

        _, model, tasks, builder = self.load(run)
        dataset = builder.dataset("val", train=False)
        n = min(self.opts.attention_images, len(dataset))
        samples = [dataset[i] for i in range(n)]
        x = torch.stack([s["image"] for s in samples])
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad(), model.recording() as rec:
            raw = model(x.to(device))
        if not any(k.startswith("attention/") for k in rec):
            raise ValueError("the model recorded no attention/<task>/<block> masks")
        out = []
        for b, sample in enumerate(samples):
            rows = []
            for task in tasks:
                prefix = f"attention/{task.name}/"
                masks = [
                    (k[len(prefix) :], rec[k][b].float().mean(dim=0).cpu().numpy()) for k in rec if k.startswith(prefix)
                ]
                pred = task.spec.display(task, task.postprocess(raw[task.name][b : b + 1].float())[0])
                target = sample.get(task.name)
                rows.append(
                    {
                        "task": task,
                        "target": target.cpu().numpy() if target is not None else None,
                        "pred": pred.cpu().numpy(),
                        "masks": masks,
                    }
                )
            out.append((sample["image"].cpu().numpy(), rows))
        return out

    # ------------------------------------------------------------------ problems and provenance

    def problems_section(self, runs: list[Run], missing: list[dict[str, Any]]) -> Section:
        """Runs that did not finish: status, progress and error."""
        rows = [
            [
                Cell(r.name),
                Cell(r.sweep or "–"),
                Cell(r.status),
                Cell(f"{len(r.epochs)} epochs logged"),
                Cell(r.error or "–"),
            ]
            for r in runs
        ]
        rows += [
            [
                Cell(str(m.get("name"))),
                Cell(str(m.get("sweep") or "–")),
                Cell(str(m.get("status"))),
                Cell("no run folder"),
                Cell(str(m.get("error") or "–")),
            ]
            for m in missing
        ]
        return Section("Unfinished and failed runs", [Table(["Run", "Sweep", "Status", "Progress", "Error"], rows)])

    def provenance_section(self, runs: list[Run]) -> Section:
        """Per-run config hash, versions, commit, machine, wall time; and the report's own."""
        rows = []
        for r in runs:
            p = run_provenance(r)
            versions = ", ".join(f"{k} {v}" for k, v in (p["versions"] or {}).items()) or "–"
            rows.append(
                [
                    Cell(p["run"], title=p["path"]),
                    Cell(p["status"]),
                    Cell(str(p["seed"])),
                    Cell(str(p["epochs"])),
                    Cell(p["config_hash"] or "–"),
                    Cell(versions),
                    Cell((p["git_commit"] or "–")[:10], title=p["git_commit"]),
                    Cell(str(p["machine"] or "–")),
                    Cell(fmt_duration(p["wall_time"])),
                ]
            )
        rp = self.provenance
        items = [
            f"Generated {rp['generated']} by `{rp['command']}`",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in rp["versions"].items()),
            f"Git commit: `{rp['git_commit'] or 'not a git checkout'}`",
            f"Machine: {rp['machine']['host']} ({rp['machine']['platform']})",
        ]
        return Section(
            "Provenance",
            [
                Table(
                    ["Run", "Status", "Seed", "Epochs", "Config hash", "Versions", "Commit", "Machine", "Wall time"],
                    rows,
                    caption="Per run, from its results.json; full values in provenance.json.",
                    align=["l", "l", "r", "r", "l", "l", "l", "l", "r"],
                ),
                Paragraph("This report:"),
                BulletList(items),
            ],
        )


def _runs_report_last(runs: list[Run], source: str) -> int:
    """The K of the runs' ``eval.report_last`` when all finished runs agree (and source is final), else 1."""
    wanted = {r.report_last for r in runs if r.finished}
    return wanted.pop() if source == "final" and len(wanted) == 1 else 1


def _dataset_section(config: dict[str, Any]) -> dict[str, Any]:
    """The run's ``dataset`` config section (what decides its training labels), for caching counts."""
    return dict(config.get("dataset") or {})


def _class_means(runs: list[Run], keys: list[str], source: str, last: int) -> dict[str, float]:
    """Per key, the mean over the runs of results.json's ``source`` value (``last`` > 1: of the mean over the
    last epochs' validation values); a key a run lacks or logs as non-finite is left out for that run."""
    sums: dict[str, list[float]] = {}
    for run in runs:
        if last > 1:
            tail = [e.get("val") or {} for e in run.epochs[-last:]]
            values = {}
            for k in keys:
                vals = [float(v[k]) for v in tail if v.get(k) is not None]
                if vals:
                    values[k] = sum(vals) / len(vals)
        else:
            got = (run.results or {}).get(source) or {}
            values = {k: float(got[k]) for k in keys if got.get(k) is not None}
        for k, v in values.items():
            if math.isfinite(v):
                sums.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _rank_note(data: dict[str, Any]) -> str:
    """Spearman's rank correlation of pixels and gain per row (negative: rarer classes gain more)."""
    from scipy.stats import spearmanr

    parts = []
    for row in data["rows"]:
        pairs = [(p, g) for p, g in zip(data["pixels"], row["gain"]) if g is not None]
        if len(pairs) >= 3 and len({p for p, _ in pairs}) > 1 and len({g for _, g in pairs}) > 1:
            rho = float(spearmanr([p for p, _ in pairs], [g for _, g in pairs]).statistic)
            row["spearman"] = rho
            parts.append(f"{row['label']} {rho:+.2f}")
    if not parts:
        return ""
    return (
        " Spearman rank correlation of pixels and gain (negative: rarer classes gain more): " + ", ".join(parts) + "."
    )


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return text[:200]


def _seed_mean(runs: list[Run], split: str, key: str) -> list[tuple[int, float]]:
    """Per epoch, the mean of ``split/key`` over the runs that logged it at every such epoch."""
    per_run = [dict(r.series(split, key)) for r in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return []
    epochs = sorted(set.intersection(*(set(p) for p in per_run)))
    return [(e, sum(p[e] for p in per_run) / len(per_run)) for e in epochs if all(math.isfinite(p[e]) for p in per_run)]


def model_records(run: Run) -> list[str]:
    """What the run's model records (``MultiTaskModel.records``): from results.json, else its registered class."""
    from mtlkit.registry import ARCHITECTURES

    caps = (run.results or {}).get("capabilities")
    if isinstance(caps, dict):
        return list(caps.get("records") or [])
    return list(ARCHITECTURES.get(run.arch).records) if run.arch in ARCHITECTURES else []


def _pick(
    tables: list[ResultsTable], records: str, limit: int, one_per_arch: bool
) -> list[tuple[ResultsTable, Row, Run]]:
    """Up to ``limit`` runs per table whose model records ``records``, equal weighting first, first seed."""
    out = []
    for t in tables:
        rows = sorted(
            (r for r in t.rows if records in model_records(r.runs[0])), key=lambda r: (r.weighting != "equal", r.label)
        )
        seen: set[str] = set()
        chosen = []
        for row in rows:
            if one_per_arch and row.arch in seen:
                continue
            seen.add(row.arch)
            chosen.append((t, row, row.runs[0]))
        out += chosen[:limit]
    return out


def _summary(t: ResultsTable) -> str:
    """One sentence: the best row by delta_m and its #P."""
    rated = [(r.delta, r) for r in t.rows if r.delta is not None and not r.is_baseline]
    if not rated:
        return ""
    best = max(rated, key=lambda pair: pair[0])[1]
    ratio = f", {best.params_ratio:.2f}x parameters" if best.params_ratio is not None else ""
    return f"Best Δm: **{best.label}** ({best.delta:+.2f} %{ratio})."


@dataclass
class _CurveGroup:
    """The lines of one training-curves figure: a results table's rows and the unfinished runs like them."""

    title: str
    key: str
    dataset: str
    tasks: list[dict[str, Any]]
    lines: list[dict[str, Any]]

    @property
    def names(self) -> list[str]:
        """The group's task names, in order."""
        return [x["name"] for x in self.tasks]


def _line(label: str, runs: list[Run], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """One curve's data: per task, the seed-mean training loss and validation main metric per epoch."""
    keys = [("train", f"loss/{x['name']}") for x in tasks] + [("val", f"{x['name']}/{x['main_metric']}") for x in tasks]
    return {"label": label, "series": {k: _seed_mean(runs, split, k) for split, k in keys}}


def _one_epoch_table(group: _CurveGroup, lines: list[dict[str, Any]]) -> Table:
    """The values of the lines that logged one epoch (a curve of one point says nothing)."""
    keys = [k for x in group.tasks for k in (f"loss/{x['name']}", f"{x['name']}/{x['main_metric']}")]
    headers = ["Row", "Epoch"]
    for x in group.tasks:  # the metric's table label where the task's kind is known (results.json)
        metric = Task.from_dict(x).metric_label(x["main_metric"]) if "kind" in x else x["main_metric"]
        headers += [f"{x['name']}: train loss", f"{x['name']}: val {metric}"]
    places = {k: decimals([ln["series"][k][0][1] for ln in lines if ln["series"].get(k)]) for k in keys}
    rows = []
    for ln in lines:
        epoch = next(pts[0][0] for pts in ln["series"].values() if pts)
        rows.append(
            [Cell(ln["label"]), Cell(str(epoch))]
            + [Cell(fmt_value(ln["series"][k][0][1], places[k]) if ln["series"].get(k) else "–") for k in keys]
        )
    return Table(
        headers,
        rows,
        f"{group.title}: one logged epoch, so no curve; its training loss and "
        f"validation main metric (mean over seeds).",
        align=["l", "r"] + ["r"] * len(keys),
    )
