"""Reports a reader can read: time of every run, curves of unfinished ones, one-epoch runs as a table,
one naming rule for methods, fixed decimals per column, and lines that can be told apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.report_fixtures import DEPTH, SEG, paper_like_runs, write_run
from mtlkit.registry import WEIGHTINGS
from mtlkit.report import ReportOptions, build_tables, collect, make_report
from mtlkit.report import build as build_module
from mtlkit.report.plots import curves_figure, line_styles
from mtlkit.report.provenance import fmt_duration
from mtlkit.report.table import method_label

KEYS = ["segmentation/miou", "segmentation/pix_acc", "depth/abs_err", "depth/rel_err"]
NO_MODELS = ReportOptions(models=False, argv=["mtlkit", "report"])


def _vals(*values: float) -> dict[str, float]:
    return dict(zip(KEYS, values))


def _logged_epoch_time(run: Path) -> float:
    return sum(json.loads(line)["epoch_time"] for line in (run / "metrics.jsonl").read_text().splitlines())


def test_total_training_time_counts_the_unfinished_runs(tmp_path: Path) -> None:
    runs = list(paper_like_runs(tmp_path / "runs").values())
    runs.append(
        write_run(
            tmp_path / "runs", "dense-s0", "dense", "equal", 0, _vals(0.3, 0.5, 0.6, 0.3), epochs=2, finished=False
        )
    )
    md = make_report([tmp_path / "runs"], tmp_path / "report", NO_MODELS).markdown.read_text()
    # the fixture's wall time equals its logged epoch times, finished or not
    total = sum(_logged_epoch_time(r) for r in runs)
    assert (
        f"total training time {fmt_duration(total)} ({fmt_duration(_logged_epoch_time(runs[-1]))} of it in "
        "unfinished runs)." in md
    )


def test_an_interrupted_run_gets_its_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[list[str]] = []
    original = build_module.plots.plot_curves

    def recording(lines, tasks, path, title=""):
        drawn.append([ln["label"] for ln in lines])
        return original(lines, tasks, path, title)

    monkeypatch.setattr(build_module.plots, "plot_curves", recording)
    write_run(tmp_path / "runs", "mtan-s0", "mtan", "equal", 0, _vals(0.4, 0.6, 0.5, 0.2))
    write_run(tmp_path / "runs", "dense-s0", "dense", "equal", 0, _vals(0.3, 0.5, 0.6, 0.3), epochs=2, finished=False)
    write_run(tmp_path / "other", "alone", "mtan", "dwa", 0, _vals(0.3, 0.5, 0.6, 0.3), epochs=2, finished=False)
    make_report([tmp_path / "runs"], tmp_path / "report", NO_MODELS)
    assert drawn == [["MTAN / Equal", "dense-s0 (interrupted, 2 epochs)"]]  # in the table of its tasks
    drawn.clear()
    files = make_report([tmp_path / "other"], tmp_path / "report-alone", NO_MODELS)
    assert drawn == [["alone (interrupted, 2 epochs)"]]  # no finished run: a figure of its own
    assert any(p.name.startswith("curves_") for p in files.figures)


def test_one_epoch_runs_are_a_table_not_plots_of_one_dot(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "mtan-s0", "mtan", "equal", 0, _vals(0.4, 0.6, 0.5, 0.2), epochs=1)
    write_run(tmp_path / "runs", "dense-s0", "dense", "equal", 0, _vals(0.3, 0.5, 0.6, 0.3), epochs=1, finished=False)
    files = make_report([tmp_path / "runs"], tmp_path / "report", NO_MODELS)
    assert not any(p.name.startswith("curves_") for p in files.figures)
    md = files.markdown.read_text()
    section = md[md.index("## Training curves") : md.index("## Task weights")]
    assert (
        "| Row | Epoch | segmentation: train loss | segmentation: val mIoU | depth: train loss | "
        "depth: val Abs Err |" in section
    )
    # write_run's one epoch: train loss 2.0 / 0.8, val = final (f = 1)
    assert "| MTAN / Equal | 1 | 2.0000 | 0.4000 | 0.8000 | 0.5000 |" in section
    assert "| dense-s0 (interrupted, 1 epoch) | 1 | 2.0000 | 0.3000 | 0.8000 | 0.6000 |" in section


def test_method_names_come_from_one_rule(tmp_path: Path) -> None:
    methods = ["equal", "dwa", "pcgrad", "nash_mtl", "uncertainty", "imtl_g"]
    for i, name in enumerate(methods):
        write_run(tmp_path, f"mtan-{name}", "mtan", name, 0, _vals(0.4 + 0.01 * i, 0.6, 0.5, 0.2))
    (table,) = build_tables(collect([tmp_path]).runs)
    shown = [cells[2].text for cells in (row for row in table.document_table().rows)]
    assert sorted(shown) == sorted(method_label(m) for m in methods)
    assert {"Equal", "DWA", "PCGrad", "Nash-MTL", "IMTL-G"} <= set(shown)
    labels = {name: method_label(name) for name, _ in WEIGHTINGS.items()}
    assert all(label != name for name, label in labels.items())  # no method is shown by its config name
    assert len(set(labels.values())) == len(labels)  # and no two share a label
    assert method_label("my_own") == "my_own"  # an unregistered (fit) method: as recorded


def test_a_column_has_one_number_of_decimals(tmp_path: Path) -> None:
    """11.25°-like columns holding 8.456 and 31.756: both with 2 decimals (not 8.4560 beside 31.76)."""
    write_run(tmp_path, "a", "mtan", "equal", 0, _vals(0.4, 0.6, 8.456, 0.2))
    write_run(tmp_path, "b", "split_wide", "equal", 0, _vals(0.3, 0.5, 31.756, 0.2))
    (table,) = build_tables(collect([tmp_path]).runs)
    doc = table.document_table()
    col = doc.headers.index("Abs Err ↓")
    assert sorted(row[col].text for row in doc.rows) == ["31.76", "8.46"]
    assert {len(row[doc.headers.index("mIoU ↑")].text.split(".")[1]) for row in doc.rows} == {4}


def test_seventeen_curves_are_seventeen_distinct_lines() -> None:
    lines = [{"label": f"run {i}", "series": {"loss/segmentation": [(1, 1.0 + i), (2, 0.5 + i)]}} for i in range(17)]
    fig = curves_figure(lines, [SEG, DEPTH])
    drawn = fig.axes[0].get_lines()
    assert len(drawn) == 17
    assert (
        len(
            {
                (ln.get_color() if isinstance(ln.get_color(), str) else tuple(ln.get_color()), ln.get_linestyle())
                for ln in drawn
            }
        )
        == 17
    )
    styles = line_styles(45)  # beyond colours x line styles, markers tell them apart
    assert len(set(styles)) == 45
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())  # whole epochs
