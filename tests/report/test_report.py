"""Report: the paper-layout table (bold best by direction, delta_m by hand), Markdown/HTML contents."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import pytest
from matplotlib.image import imread

from helpers.report_fixtures import fake_loader, paper_like_runs, write_run
from mtlkit.errors import ConfigError
from mtlkit.report import ReportOptions, build_tables, collect, make_report
from mtlkit.report.runs import read_run
from mtlkit.report.table import fmt_delta, fmt_value, sample_std

KEYS = ["segmentation/miou", "segmentation/pix_acc", "depth/abs_err", "depth/rel_err"]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    paper_like_runs(root)
    return root


def test_table_rows_means_and_hand_checked_delta_m(runs_dir: Path) -> None:
    """Single-task baseline = seed mean (0.40, 0.60, 0.50, 0.20); each delta below worked out by hand."""
    (table,) = build_tables(collect([runs_dir]).runs)
    assert [(r.arch, r.weighting) for r in table.rows] == [
        ("single", "equal"),
        ("stan", "equal"),
        ("split_wide", "dwa"),
        ("cross_stitch", "equal"),
        ("mtan", "equal"),
    ]
    single, stan, split, stitch, mtan = table.rows
    assert single.mean == pytest.approx(dict(zip(KEYS, [0.40, 0.60, 0.50, 0.20])))
    assert single.std["segmentation/miou"] == pytest.approx(0.0282842712)  # std(0.38, 0.42), ddof=1
    assert mtan.mean == pytest.approx(dict(zip(KEYS, [0.43, 0.63, 0.475, 0.21])))
    # single s0: (-5 + 0 + 4 + 0) / 4; s1: (5 + 0 - 4 + 0) / 4
    assert single.deltas == pytest.approx([-0.25, 0.25])
    assert single.delta == pytest.approx(0.0, abs=1e-12) and single.delta_std == pytest.approx(0.3535533906)
    # stan: (-2.5 - 3.3333 + 0 - 5) / 4
    assert stan.deltas == pytest.approx([-2.7083333333])
    # split_wide: miou -10, pix -10, abs_err 0.55 vs 0.50 is worse: -10, rel_err 0.18 vs 0.20 is better: +10
    assert split.deltas == pytest.approx([-5.0])
    assert stitch.deltas == pytest.approx([-3.4166666667])
    # mtan s0: (+10 + 10 + 10 - 10) / 4 = 5; s1: (+5 + 0 + 0 + 0) / 4 = 1.25
    assert mtan.deltas == pytest.approx([5.0, 1.25])
    assert mtan.delta == pytest.approx(3.125) and mtan.delta_std == pytest.approx(2.6516504294)
    assert single.is_baseline and not mtan.is_baseline
    assert table.baseline == "Single-Task"


def test_best_per_column_respects_direction(runs_dir: Path) -> None:
    (table,) = build_tables(collect([runs_dir]).runs)
    best = table.best()
    mtan, split = 4, 2
    assert best["segmentation/miou"] == {mtan}  # higher is better
    assert best["depth/abs_err"] == {mtan}  # lower: 0.475
    assert best["depth/rel_err"] == {split}  # lower: 0.18 beats mtan's 0.21
    assert best["delta_m"] == {mtan}
    doc = table.document_table()
    assert doc.headers[:4] == ["#P", "Architecture", "Weighting", "Seeds"]
    assert doc.headers[4:] == ["mIoU ↑", "Pix Acc ↑", "Abs Err ↓", "Rel Err ↓", "Δm % ↑"]
    assert doc.groups == [("", 4), ("Segmentation", 2), ("Depth", 2), ("", 1)]
    texts = [[c.text for c in row] for row in doc.rows]
    assert texts[0][:4] == ["2.00", "Single-Task", "n.a.", "2"]
    assert texts[2][:3] == ["1.20", "Split, Wide", "DWA"]
    assert texts[4][4] == "0.4300" and doc.rows[4][4].bold
    assert doc.rows[2][7].bold and not doc.rows[4][7].bold  # rel_err column
    assert not doc.rows[0][4].bold
    assert texts[4][8] == fmt_delta(3.125, 2.6516504294)


def test_ties_are_all_bold(tmp_path: Path) -> None:
    vals = dict(zip(KEYS, [0.5, 0.6, 0.5, 0.2]))
    write_run(tmp_path, "a", "single", "equal", 0, vals)
    write_run(tmp_path, "b", "mtan", "equal", 0, vals)
    (table,) = build_tables(collect([tmp_path]).runs)
    assert table.best()["segmentation/miou"] == {0, 1}
    assert [r.delta for r in table.rows] == pytest.approx([0.0, 0.0])


def test_no_baseline_means_no_delta_column_and_a_note(tmp_path: Path) -> None:
    write_run(tmp_path, "m", "mtan", "equal", 0, dict(zip(KEYS, [0.5, 0.6, 0.5, 0.2])))
    (table,) = build_tables(collect([tmp_path]).runs)
    assert not table.has_delta and "Δm % ↑" not in table.document_table().headers
    assert any("no Δm column" in n for n in table.notes)


def test_settings_split_rows_and_baseline_matches_setting(tmp_path: Path) -> None:
    """Runs differing in optim.lr become separate rows; each is compared with the baseline of its lr."""
    for lr, miou in ((1e-3, 0.4), (1e-2, 0.5)):
        write_run(
            tmp_path,
            f"single-{lr}",
            "single",
            "equal",
            0,
            dict(zip(KEYS, [miou, 0.6, 0.5, 0.2])),
            extra_config={"optim": {"lr": lr}},
        )
        write_run(
            tmp_path,
            f"mtan-{lr}",
            "mtan",
            "equal",
            0,
            dict(zip(KEYS, [miou * 1.2, 0.6, 0.5, 0.2])),
            extra_config={"optim": {"lr": lr}},
        )
    (table,) = build_tables(collect([tmp_path]).runs)
    assert len(table.rows) == 4 and table.has_setting
    assert {r.setting_text for r in table.rows} == {"optim.lr=0.001", "optim.lr=0.01"}
    for row in table.rows:
        expected = 0.0 if row.arch == "single" else 20.0 / 4  # +20 % miou, other metrics equal
        assert row.deltas == pytest.approx([expected])


def test_average_of_last_epochs(tmp_path: Path) -> None:
    """The fixture logs val = final * (0.5 + 0.5 e / E): with E = 4 the last two epochs give 0.875 and 1."""
    run = read_run(write_run(tmp_path, "r", "mtan", "equal", 0, dict(zip(KEYS, [0.4, 0.6, 0.5, 0.2])), epochs=4))
    assert run.values("final")["segmentation/miou"] == pytest.approx(0.4)
    assert run.values("final", last=2)["segmentation/miou"] == pytest.approx(0.4 * (0.875 + 1.0) / 2)


def test_formatting_helpers() -> None:
    assert fmt_value(0.123456) == "0.1235" and fmt_value(31.756) == "31.76" and fmt_value(None) == "–"
    assert fmt_delta(-1.234, None) == "-1.23" and fmt_delta(2.0, 0.5) == "+2.00 ± 0.50"
    assert sample_std([1.0, 3.0]) == pytest.approx(2**0.5) and sample_std([1.0]) == 0.0


def test_collect_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such run or sweep folder"):
        collect([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run folder"):
        collect([tmp_path / "empty"])


@pytest.mark.slow
def test_report_files_markdown_and_html(runs_dir: Path, tmp_path: Path) -> None:
    write_run(runs_dir, "dense-s0", "dense", "equal", 0, dict(zip(KEYS, [0.3, 0.5, 0.6, 0.3])), finished=False)
    out = tmp_path / "report"
    files = make_report(
        [runs_dir], out, ReportOptions(title="Test report", argv=["mtlkit", "report"]), loader=fake_loader
    )
    md = files.markdown.read_text()
    # the table in the paper layout, best in bold, delta_m with its spread over seeds
    assert "| #P | Architecture | Weighting | Seeds | Segmentation: mIoU ↑ |" in md
    mtan_row = next(line for line in md.splitlines() if line.startswith("| 1.20 | MTAN |"))
    assert "**0.4300**" in mtan_row and "**0.6300**" in mtan_row and "± 2.65" in mtan_row
    assert "| 2.00 | Single-Task | n.a. | 2 | 0.4000 ± 0.0283 | 0.6000 ± 0.0000 |" in md
    assert "Best Δm: **MTAN / Equal** (+3.12 %, 1.20x parameters)." in md
    # sections and figures
    for title in (
        "## Results",
        "## Training curves",
        "## Task weights",
        "## Cross-stitch alphas",
        "## Attention masks",
        "## Unfinished and failed runs",
        "## Provenance",
        "## Files",
    ):
        assert title in md
    assert "dense-s0" in md and "interrupted" in md  # unfinished: has last.pt, no results
    names = sorted(p.name for p in files.figures)
    assert "curves_scenes-segmentation7-depth1.png" in names
    assert "weights_scenes-segmentation7-depth1.png" in names
    assert "stitch_cross_stitch-s0.png" in names
    assert {"attention_mtan-s0_0.png", "attention_mtan-s0_1.png", "attention_stan-s0_0.png"} <= set(names)
    for p in files.figures:
        assert imread(p).shape[0] > 100
        assert f"](figures/{p.name})" in md
    assert "Constant task weights (not plotted): Cross-Stitch / Equal, MTAN / Equal, STAN, Single-Task." in md
    # provenance
    assert "0123456789" in md and "hash0mta" in md
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["runs"]) == 8 and prov["report"]["command"] == "mtlkit report"
    # HTML: self-contained (every image a data URI, nothing fetched), same table with bold cells
    page = files.html.read_text()
    srcs = re.findall(r'<img src="([^"]{0,30})', page)
    assert len(srcs) == len(files.figures) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "<script" not in page
    assert '<th colspan="2">Segmentation</th>' in page
    # the spread over seeds beside the mean; † and the Welch p-value: 2 seeds each cannot tell 0.43 from 0.40
    assert (
        '<td class="r" title="Welch p = 0.35 vs the baseline row"><b>0.4300</b> '
        '<span class="extra">± 0.0141†</span></td>' in page
    )
    assert page.count("<table>") == 3  # results, unfinished runs, provenance
    # tables as CSV and JSON
    rows = list(csv.DictReader((out / "tables.csv").open()))
    assert [r["arch"] for r in rows] == ["single", "stan", "split_wide", "cross_stitch", "mtan"]
    assert float(rows[4]["delta_m"]) == pytest.approx(3.125)
    data = json.loads((out / "tables.json").read_text())
    assert data["tables"][0]["columns"][2] == {
        "key": "depth/abs_err",
        "task": "depth",
        "metric": "abs_err",
        "higher_is_better": False,
    }
    assert [r["delta_m"] for r in data["tables"][0]["rows"][4]["per_run"]] == pytest.approx([5.0, 1.25])


def test_model_that_cannot_load_is_a_note(runs_dir: Path, tmp_path: Path) -> None:
    def broken(run_dir: Path) -> tuple:
        raise FileNotFoundError(f"{run_dir}/checkpoints/best.pt: no such file")

    files = make_report([runs_dir], tmp_path / "r", ReportOptions(), loader=broken)
    md = files.markdown.read_text()
    assert "mtan-s0: skipped, the model could not be loaded or run (FileNotFoundError" in md
    assert "cross_stitch-s0: skipped, the model could not be loaded" in md
    assert not any(p.name.startswith(("attention_", "stitch_")) for p in files.figures)


def test_complexity_section_and_sweep_dir(tmp_path: Path) -> None:
    """Runs with 2 and 7 classes give two tables and a performance-vs-classes figure; sweep.json is read."""
    sweep = tmp_path / "sweep"
    for classes, miou in ((2, 0.8), (7, 0.4)):
        for arch, gain in (("single", 1.0), ("mtan", 1.1)):
            write_run(
                sweep,
                f"c{classes}-{arch}",
                arch,
                "equal",
                0,
                dict(zip(KEYS, [miou * gain, 0.7, 0.5, 0.2])),
                classes=classes,
            )
    runs = [{"name": p.name, "status": "finished", "run_dir": p.name} for p in sorted(sweep.iterdir())]
    runs.append({"name": "c7-dense", "status": "failed", "run_dir": "c7-dense", "error": "RuntimeError: boom"})
    (sweep / "sweep.json").write_text(json.dumps({"name": "complexity", "runs": runs}))
    files = make_report([sweep], tmp_path / "r", ReportOptions(models=False))
    md = files.markdown.read_text()
    assert "## Task complexity" in md and "complexity_scenes-segmentation-depth.png" in md
    assert "c7-dense" in md and "RuntimeError: boom" in md and "Sweeps: `complexity` (5 runs)" in md
    tables = json.loads((tmp_path / "r" / "tables.json").read_text())["tables"]
    assert [t["tasks"][0]["channels"] for t in tables] == [2, 7]
    assert [r["delta_m"] for r in tables[0]["rows"]] == pytest.approx([0.0, 10.0 / 4])


def test_cli_report(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mtlkit.cli import report as report_cli

    parser = argparse.ArgumentParser(prog="mtlkit")
    report_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["report", str(runs_dir), "--out", str(tmp_path / "o"), "--no-models", "--average-last", "2"]
    )
    assert args.func(args) == 0
    assert "report.html" in capsys.readouterr().out
    md = (tmp_path / "o" / "report.md").read_text()
    assert "mean of last 2 epochs" in md and "Skipped: model loading turned off" in md
    bad = parser.parse_args(["report", str(runs_dir), "--out", str(tmp_path / "x"), "--average-last", "0"])
    with pytest.raises(ConfigError, match="--average-last"):
        bad.func(bad)


def test_column_groups_are_named_by_the_task_kind_not_the_task_name() -> None:
    """A task named ``seg`` of kind segmentation heads its columns "Segmentation" (the paper's heading, from the
    kind); a kind without a heading, or two tasks of one kind, show the task names."""
    from mtlkit.report.table import Column, ResultsTable
    from mtlkit.tasks import depth_task, make_task, segmentation_task

    def groups(tasks: list) -> list[str]:
        dicts = [t.to_dict() for t in tasks]
        columns = [Column(f"{t['name']}/{m}", t["name"], m, h) for t in dicts for m, h in t["metrics"].items()]
        return [label for label, _ in ResultsTable("k", "folder", dicts, columns, [], "final").document_table().groups]

    assert groups([segmentation_task(13, name="seg"), depth_task(name="z"), make_task("binary", "fg")]) == [
        "",
        "Segmentation",
        "Depth",
        "fg",
    ]
    assert groups([segmentation_task(3, name="a"), segmentation_task(5, name="b")]) == ["", "a", "b"]
