"""Report columns shown but not in Δm: a task kind's ``reported_metrics`` (segmentation's mean class accuracy
and fwIoU) as table columns, marked ‡, with Δm, its baselines and its Welch test exactly as without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from helpers.report_fixtures import paper_like_runs, write_run
from mtlkit.report import ReportOptions, build_tables, collect, make_report
from mtlkit.report import html as html_writer
from mtlkit.report import markdown as markdown_writer
from mtlkit.report.results_table import NOT_IN_DELTA, NOT_SIGNIFICANT, ResultsTable

KEYS = ["segmentation/miou", "segmentation/pix_acc", "depth/abs_err", "depth/rel_err"]
SHOWN = ["segmentation/macc", "segmentation/fwiou"]
#: per run: miou, pix_acc, abs_err, rel_err, macc, fwiou
RUNS = {
    ("single", 0): (0.40, 0.60, 0.50, 0.20, 0.30, 0.50),
    ("single", 1): (0.40, 0.60, 0.50, 0.20, 0.32, 0.52),
    ("mtan", 0): (0.44, 0.66, 0.45, 0.22, 0.39, 0.45),
    ("mtan", 1): (0.44, 0.66, 0.45, 0.22, 0.41, 0.47),
}


def write_runs(root: Path, shown: bool = True, only: tuple[str, int] | None = None) -> None:
    """The runs of RUNS; with ``shown`` they log macc and fwiou (``only``: just that run does)."""
    for (arch, seed), values in RUNS.items():
        final = dict(zip(KEYS, values[:4]))
        if shown and (only is None or only == (arch, seed)):
            final.update(zip(SHOWN, values[4:]))
        write_run(root, f"{arch}-s{seed}", arch, "equal", seed, final, params_ratio=2.0 if arch == "single" else 1.2)


def one_table(root: Path, **kwargs: Any) -> ResultsTable:
    [table] = build_tables(collect([root]).runs, **kwargs)
    return table


def test_logged_reported_metrics_are_columns_outside_delta_m(tmp_path: Path) -> None:
    write_runs(tmp_path / "runs")
    table = one_table(tmp_path / "runs")
    assert [c.key for c in table.columns] == [*KEYS[:2], *SHOWN, *KEYS[2:]]  # after their task's metrics
    assert [c.key for c in table.delta_columns] == KEYS and [c.key for c in table.shown_only] == SHOWN
    single, mtan = table.rows
    assert mtan.mean["segmentation/macc"] == pytest.approx(0.40) and mtan.mean["segmentation/fwiou"] == pytest.approx(
        0.46
    )
    assert single.mean["segmentation/fwiou"] == pytest.approx(0.51)
    # Δm over mIoU, Pix Acc, Abs Err, Rel Err only: (+10 + 10 + 10 - 10) / 4 = 5 for both seeds; with
    # macc (0.39 / 0.31: +25.8 %) and fwiou (0.45 / 0.51: -11.8 %) it would be 7.33
    assert mtan.deltas == pytest.approx([5.0, 5.0])
    # best in bold, by direction, in the shown columns too: macc mtan's 0.40, fwiou single's 0.51
    best = table.best()
    assert best["segmentation/macc"] == {1} and best["segmentation/fwiou"] == {0}
    # Welch per cell in the shown columns as in the others; Δm's own test over the per-seed Δm values
    fwiou = stats.ttest_ind([0.45, 0.47], [0.50, 0.52], equal_var=False).pvalue
    assert mtan.pvalues["segmentation/fwiou"] == pytest.approx(fwiou) and fwiou >= 0.05  # 0.46 vs 0.51: p = 0.07
    assert mtan.pvalues["segmentation/macc"] == pytest.approx(
        stats.ttest_ind([0.39, 0.41], [0.30, 0.32], equal_var=False).pvalue
    )
    doc = table.document_table()
    assert doc.headers[4:] == ["mIoU ↑", "Pix Acc ↑", "Mean Acc‡ ↑", "fwIoU‡ ↑", "Abs Err ↓", "Rel Err ↓", "Δm % ↑"]
    assert doc.groups == [("", 4), ("Segmentation", 4), ("Depth", 2), ("", 1)]
    cells = doc.rows[1][6:8]
    assert [c.text for c in cells] == ["0.4000", "0.4600"] and cells[0].bold and not cells[1].bold
    assert cells[0].extra == "± 0.0141" and cells[1].extra == f"± 0.0141{NOT_SIGNIFICANT}"
    assert doc.rows[0][7].text == "0.5100" and doc.rows[0][7].bold
    caption = table.caption()
    assert "Δm: mean relative gain over all metrics but the ‡ ones vs the Single-Task row" in caption
    assert f"{NOT_IN_DELTA} shown, not in Δm" in caption


def test_no_run_logs_them_no_column(tmp_path: Path) -> None:
    paper_like_runs(tmp_path / "runs")
    table = one_table(tmp_path / "runs")
    assert [c.key for c in table.columns] == KEYS and not table.shown_only
    assert NOT_IN_DELTA not in table.caption() and not any(NOT_IN_DELTA in h for h in table.document_table().headers)
    assert all("in_delta" not in c for c in table.to_json()["columns"])


def test_one_run_logging_them_is_enough(tmp_path: Path) -> None:
    """Older runs (no macc / fwiou) beside a newer one: the column is there, empty for the older rows."""
    write_runs(tmp_path / "runs", only=("mtan", 1))
    table = one_table(tmp_path / "runs")
    assert [c.key for c in table.shown_only] == SHOWN
    single, mtan = table.rows
    assert "segmentation/fwiou" not in single.mean and mtan.mean["segmentation/fwiou"] == 0.47
    assert [c.text for c in table.document_table().rows[0][6:8]] == ["–", "–"]


def test_delta_m_is_the_same_with_and_without_the_shown_columns(tmp_path: Path) -> None:
    """Against the single-task row and against a published row: Δm, its spread and its Welch p, bit for bit."""
    write_runs(tmp_path / "with")
    write_runs(tmp_path / "without", shown=False)
    for kwargs in (
        {},
        {"baseline": "reference:cross_stitch_paper/One-task", "references": ["cross_stitch_paper"]},
        {"last": 2},
    ):
        with_, without = one_table(tmp_path / "with", **kwargs), one_table(tmp_path / "without", **kwargs)
        assert len(with_.columns) == len(without.columns) + 2, kwargs
        assert [r.deltas for r in with_.rows] == [r.deltas for r in without.rows], kwargs
        assert [r.pvalues.get("delta_m") for r in with_.rows] == [r.pvalues.get("delta_m") for r in without.rows]
        assert [r.delta for r in with_.references] == [r.delta for r in without.references], kwargs
        assert with_.notes == without.notes, kwargs
    # by hand against the published One-task row (46.6 % pixel accuracy, 18.4 % mIoU; depth is not in the
    # paper, and its f.w. IU 33.1 % is shown, not in Δm): mtan (0.66 - 0.466) / 0.466, (0.44 - 0.184) / 0.184
    table = one_table(tmp_path / "with", baseline="reference:cross_stitch_paper/One-task")
    expected = 100 * ((0.66 - 0.466) / 0.466 + (0.44 - 0.184) / 0.184) / 2
    assert table.rows[1].deltas == pytest.approx([expected, expected])
    assert table.rows[1].baseline_mean is not None
    assert table.rows[1].baseline_mean["segmentation/fwiou"] == pytest.approx(0.331)
    # the mean of the last 2 of 3 epochs (each epoch logs final x (0.5 + 0.5 e / 3)): x 11/12
    averaged = one_table(tmp_path / "with", last=2)
    assert averaged.rows[0].mean["segmentation/macc"] == pytest.approx(0.31 * 11 / 12)


def test_published_rows_fill_the_shown_columns_in_the_table_units(tmp_path: Path) -> None:
    """cross_stitch_paper prints f.w. IU in percent (its ``# percent:`` line): 34.0 becomes 0.3400 as the
    runs' fwiou; the paper has no mean class accuracy, so that cell is empty."""
    write_runs(tmp_path / "runs")
    table = one_table(
        tmp_path / "runs", baseline="reference:cross_stitch_paper/One-task", references=["cross_stitch_paper"]
    )
    stitch = next(r for r in table.references if r.row.name == "Cross-stitch")
    assert stitch.values["segmentation/fwiou"] == pytest.approx(0.340)
    assert "segmentation/macc" not in stitch.values
    # its Δm against One-task over pixel accuracy and mIoU only: (47.2 - 46.6) / 46.6, (19.3 - 18.4) / 18.4
    assert stitch.delta == pytest.approx(100 * (0.6 / 46.6 + 0.9 / 18.4) / 2)  # 3.09; with f.w. IU 2.97
    doc = table.document_table()
    line = doc.rows[len(table.rows) + [r.row.name for r in table.references].index("Cross-stitch")]
    assert [c.text for c in line[4:8]] == ["0.1930", "0.4720", "–", "0.3400"] and all(c.muted for c in line)
    [rec] = [r for r in table.records() if r["setting"] == "reference cross_stitch_paper: Cross-stitch"]
    assert rec["segmentation/fwiou"] == pytest.approx(0.340) and rec["segmentation/macc"] is None


def test_rendered_tables_and_json_mark_the_columns(tmp_path: Path) -> None:
    write_runs(tmp_path / "runs")
    table = one_table(tmp_path / "runs")
    md = markdown_writer.table(table.document_table())
    header = md.splitlines()[0]
    assert "| Segmentation: mIoU ↑ | Segmentation: Pix Acc ↑ | Segmentation: Mean Acc‡ ↑ |" in header
    assert "| Segmentation: fwIoU‡ ↑ | Depth: Abs Err ↓ |" in header
    assert "| 1.20 | MTAN | Equal | 2 | **0.4400** ± 0.0000 | **0.6600** ± 0.0000 | **0.4000** ± 0.0141 |" in md
    assert "‡ shown, not in Δm" in md
    page = html_writer.table(table.document_table())
    assert '<th colspan="4">Segmentation</th>' in page and "<th>fwIoU‡ ↑</th>" in page
    assert "‡ shown, not in Δm" in page
    files = make_report([tmp_path / "runs"], tmp_path / "report", ReportOptions(models=False))
    assert "Segmentation: fwIoU‡ ↑" in files.markdown.read_text()
    [data] = json.loads((tmp_path / "report" / "tables.json").read_text())["tables"]
    assert data["columns"][3] == {
        "key": "segmentation/fwiou",
        "task": "segmentation",
        "metric": "fwiou",
        "higher_is_better": True,
        "in_delta": False,
    }
    assert "in_delta" not in data["columns"][0]
    mtan = data["rows"][1]
    assert mtan["segmentation/fwiou"] == pytest.approx(0.46) and mtan["delta_m"] == pytest.approx(5.0)
    assert mtan["per_run"][0]["values"]["segmentation/macc"] == 0.39
