"""Published reference rows, Δm against a published row, seeds' spread and Welch tests in report tables."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from mtlkit.errors import ConfigError
from mtlkit.records import EpochRecord, RunResults
from mtlkit.report import ReportOptions, make_report
from mtlkit.report.reference import available, load_reference, parse_reference
from mtlkit.report.runs import collect
from mtlkit.report.table import build_tables

NYU_TASKS = [
    {
        "name": "segmentation",
        "kind": "segmentation",
        "channels": 13,
        "metrics": {"miou": True, "pix_acc": True},
        "main_metric": "miou",
    },
    {
        "name": "depth",
        "kind": "depth",
        "channels": 1,
        "metrics": {"abs_err": False, "rel_err": False},
        "main_metric": "abs_err",
    },
    {
        "name": "normal",
        "kind": "normal",
        "channels": 3,
        "metrics": {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True},
        "main_metric": "mean",
    },
]
#: the MTAN paper's "One Task" row as published (percent for mIoU, pixel accuracy, within-t)
ONE_TASK = {
    "segmentation/miou": 15.10,
    "segmentation/pix_acc": 51.54,
    "depth/abs_err": 0.7508,
    "depth/rel_err": 0.3266,
    "normal/mean": 31.76,
    "normal/median": 25.51,
    "normal/within_11.25": 22.12,
    "normal/within_22.5": 45.33,
    "normal/within_30": 57.13,
}
MTAN_EQUAL = {
    "segmentation/miou": 17.72,
    "segmentation/pix_acc": 55.32,
    "depth/abs_err": 0.5906,
    "depth/rel_err": 0.2577,
    "normal/mean": 31.44,
    "normal/median": 25.37,
    "normal/within_11.25": 23.17,
    "normal/within_22.5": 45.65,
    "normal/within_30": 57.48,
}
LOWER = {"depth/abs_err", "depth/rel_err", "normal/mean", "normal/median"}
PERCENT = {"segmentation/miou", "segmentation/pix_acc", "normal/within_11.25", "normal/within_22.5", "normal/within_30"}


def ref_delta(values: dict[str, float], base: dict[str, float]) -> float:
    """Δm written out: mean over metrics of (-1)^l (M - B) / B, in percent."""
    terms = [(-1 if k in LOWER else 1) * (values[k] - base[k]) / base[k] for k in base]
    return 100 * sum(terms) / len(terms)


def fake_run(
    root: Path,
    name: str,
    arch: str,
    seed: int,
    values: dict[str, float],
    protocol: str,
    epochs: int = 3,
    report_last: int = 1,
) -> Path:
    """A finished NYUv2-layout run folder whose every epoch reports ``values`` (in the protocol's units)."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "name": name,
        "seed": seed,
        "dataset": {"name": "nyuv2"},
        "model": {"arch": arch},
        "weighting": {"name": "equal"},
        "eval": {"protocol": protocol, "report_last": report_last, "select_best": False},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(EpochRecord(epoch=e, val=values).to_dict()) + "\n" for e in range(1, epochs + 1))
    )
    results = RunResults(
        name=name,
        arch=arch,
        weighting="equal",
        dataset="nyuv2",
        tasks=NYU_TASKS,
        params=100,
        params_ratio=1.77,
        final=values,
        best=None,
        best_epoch=None,
        epochs=epochs,
        wall_time=1.0 * epochs,
        status="finished",
        extra={"best_note": "no best epoch: test", "eval": {"protocol": protocol, "batch_size": 2}},
    )
    (run / "results.json").write_text(json.dumps(results.to_dict()))
    return run


def in_units(published: dict[str, float], protocol: str) -> dict[str, float]:
    """Published percent values in a protocol's units: fractions, except within-t under pooled (percent)."""
    out = {}
    for k, v in published.items():
        keep_percent = protocol == "pooled" and k.startswith("normal/within")
        out[k] = v if (k not in PERCENT or keep_percent) else v / 100
    return out


def test_shipped_references_parse_with_their_source() -> None:
    assert {"mtan_paper", "libmtl_segnet_mtan", "libmtl_resnet50", "auto_lambda_split"} <= set(available())
    paper = load_reference("mtan_paper")
    assert len(paper.rows) == 17 and paper.protocol == "mtan_paper"
    assert "CVPR 2019" in paper.source and "Table" in paper.source
    assert paper.row("one task").raw == ONE_TASK and paper.row("MTAN / Equal").raw == MTAN_EQUAL
    libmtl = load_reference("libmtl_segnet_mtan")
    assert {"EW", "DWA", "CAGrad", "Nash-MTL", "Aligned-MTL"} <= {r.name for r in libmtl.rows}
    assert libmtl.row("Nash-MTL").raw["segmentation/miou"] == 40.66
    with pytest.raises(ConfigError, match="no row 'Two Tasks'"):
        paper.row("Two Tasks")
    with pytest.raises(ConfigError, match="unknown; available"):
        load_reference("nope")
    with pytest.raises(ConfigError, match="header must start"):
        parse_reference("# protocol: pooled\na\tb\n", "bad")


@pytest.mark.parametrize("protocol", ["pooled", "mtan_official", "mtan_paper"])
def test_paper_table_from_reference_data_and_a_fake_run(tmp_path: Path, protocol: str) -> None:
    """The MTAN paper's table (17 greyed rows) + a run; Δm vs the published One Task row, per protocol."""
    run_values = in_units({k: v * (1.05 if k not in LOWER else 0.9) for k, v in ONE_TASK.items()}, protocol)
    fake_run(tmp_path / "runs", "mtan-s0", "mtan", 0, run_values, protocol)
    [table] = build_tables(
        collect([tmp_path / "runs"]).runs, baseline="reference:mtan_paper/One Task", references=["mtan_paper"]
    )
    assert len(table.references) == 17
    base = in_units(ONE_TASK, protocol)
    assert table.references[0].values == pytest.approx(base)
    mtan = next(r for r in table.references if r.row.name == "MTAN / Equal")
    assert mtan.values == pytest.approx(in_units(MTAN_EQUAL, protocol))
    # published rows against the published baseline: Δm is unit free, so it equals the raw numbers' Δm
    assert mtan.delta == pytest.approx(ref_delta(MTAN_EQUAL, ONE_TASK))
    assert table.references[0].delta == pytest.approx(0.0)
    # the run: every metric 5 % better (10 % for lower-is-better) than One Task
    [row] = table.rows
    assert row.deltas == [pytest.approx(ref_delta(run_values, base))]
    assert row.delta == pytest.approx(100 * (5 * 0.05 + 4 * 0.10) / 9)
    caption = table.caption()
    assert f"`{protocol}`" in caption and "Greyed rows" in caption and "CVPR 2019" in caption
    assert any("not nyuv2" in n or "nyuv2" in n for n in table.notes)


def test_reference_rows_render_greyed_in_markdown_and_html(tmp_path: Path) -> None:
    fake_run(tmp_path / "runs", "mtan-s0", "mtan", 0, in_units(MTAN_EQUAL, "mtan_paper"), "mtan_paper")
    files = make_report(
        [tmp_path / "runs"], tmp_path / "report", ReportOptions(references=["mtan_paper"], models=False)
    )
    md, page = files.markdown.read_text(), files.html.read_text()
    assert "| *1.77* | *MTAN* | *Equal [mtan_paper]* |" in md
    assert page.count('muted"') == 17 * 12 and "0.1772" in page  # 3 name cells + 9 metrics per row
    assert "`mtan_paper`: MTAN paper's table: per-image mIoU" in md


def _seed_runs(root: Path) -> None:
    base = {
        "segmentation/miou": 0.30,
        "segmentation/pix_acc": 0.6,
        "depth/abs_err": 0.5,
        "depth/rel_err": 0.2,
        "normal/mean": 30.0,
        "normal/median": 25.0,
        "normal/within_11.25": 0.2,
        "normal/within_22.5": 0.45,
        "normal/within_30": 0.55,
    }
    for s, eps in enumerate([-0.01, 0.0, 0.012]):
        fake_run(
            root,
            f"single-s{s}",
            "single",
            s,
            {**base, "segmentation/miou": 0.30 + eps},
            "mtan_paper",
            epochs=12,
            report_last=10,
        )
        fake_run(
            root,
            f"mtan-s{s}",
            "mtan",
            s,
            {**base, "segmentation/miou": 0.40 + eps, "depth/abs_err": 0.5 + (0.05 if s == 0 else -0.03)},
            "mtan_paper",
            epochs=12,
            report_last=10,
        )


def test_welch_significance_marks_and_spread(tmp_path: Path) -> None:
    _seed_runs(tmp_path / "runs")
    files = make_report([tmp_path / "runs"], tmp_path / "report", ReportOptions(models=False))
    data = json.loads((tmp_path / "report" / "tables.json").read_text())
    assert data["source"] == "mean of last 10 epochs"  # from the runs' eval.report_last
    [table] = data["tables"]
    mtan = next(r for r in table["rows"] if r["arch"] == "mtan")
    single = [0.29, 0.30, 0.312]
    mine = [0.39, 0.40, 0.412]
    # Welch's t written out: t = (ma - mb) / sqrt(va/na + vb/nb), Welch-Satterthwaite degrees of freedom
    a, b = stats.tvar(mine), stats.tvar(single)
    t = (sum(mine) / 3 - sum(single) / 3) / math.sqrt(a / 3 + b / 3)
    df = (a / 3 + b / 3) ** 2 / ((a / 3) ** 2 / 2 + (b / 3) ** 2 / 2)
    assert mtan["pvalues"]["segmentation/miou"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert mtan["pvalues"]["segmentation/miou"] < 0.05 <= mtan["pvalues"]["depth/abs_err"]
    md = files.markdown.read_text()
    mtan_line = next(line for line in md.splitlines() if line.startswith("| 1.77 | MTAN |"))
    assert "**0.4007** ± 0.0110 |" in mtan_line and "**0.4967** ± 0.0462† |" in mtan_line
    assert "**0.6000** ± 0.0000† |" in mtan_line  # the same value in every run: no difference
    assert mtan["pvalues"]["segmentation/pix_acc"] == 1.0
    assert "Welch's t-test" in md and "figures/delta_m_" in md
    assert any(p.name.startswith("delta_m_") for p in files.figures)


def test_use_best_without_model_selection_says_why(tmp_path: Path) -> None:
    _seed_runs(tmp_path / "runs")
    [table] = build_tables(collect([tmp_path / "runs"]).runs, source="best")
    assert any("no best epoch: test" in n for n in table.notes)
    assert all(not r.mean for r in table.rows)


@pytest.mark.slow
def test_cli_reference_and_bad_baseline(tmp_path: Path) -> None:
    fake_run(tmp_path / "runs", "mtan-s0", "mtan", 0, in_units(MTAN_EQUAL, "mtan_paper"), "mtan_paper")
    cmd = [
        sys.executable,
        "-m",
        "mtlkit",
        "report",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "r"),
        "--no-models",
        "--reference",
        "mtan_paper",
    ]
    ok = subprocess.run(cmd + ["--baseline", "reference:mtan_paper/One Task"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "0.1510" in (tmp_path / "r" / "report.md").read_text()
    bad = subprocess.run(cmd + ["--baseline", "reference:mtan_paper"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("mtlkit: error: --baseline")
    assert len(bad.stderr.strip().splitlines()) == 1


#: rows of LibMTL's resnet_results.pdf checked by hand (libmtl_nyuv2_resnet50.txt, line numbers as `grep -n`)
LIBMTL_R50 = {
    "HPS/EW": [54.10, 75.78, 0.3771, 0.1596, 23.53, 17.20, 34.55, 60.75, 72.06],  # line 52, Table 2
    "MTAN/DWA": [54.82, 75.93, 0.3780, 0.1582, 22.94, 16.34, 36.53, 62.44, 73.21],  # line 119, Table 5
    "PLE/Nash-MTL": [50.80, 73.84, 0.3813, 0.1562, 22.28, 15.57, 37.90, 64.30, 74.78],  # line 169, Table 7
    "DSelect-k/RLW": [52.25, 74.92, 0.3807, 0.1561, 22.47, 15.73, 37.74, 63.75, 74.16],  # line 213, Table 9
}
#: the runs the PDF marks OOM: no row is shipped for them
LIBMTL_R50_OOM = {f"{a}/GradDrop" for a in ("Cross-stitch", "MMoE", "MTAN", "CGC", "PLE", "LTB", "DSelect-k")} | {
    "CGC/Nash-MTL",
    "LTB/Nash-MTL",
}
NYU_COLUMNS = [f"{t['name']}/{m}" for t in NYU_TASKS for m in t["metrics"]]


#: the text of LibMTL's examples/nyu/results/resnet_results.pdf (MIT licence), shipped with the tests
PUBLISHED_TEXT = Path(__file__).resolve().parents[1] / "resources" / "libmtl_nyuv2_resnet50.txt"


def test_libmtl_resnet50_rows_as_published() -> None:
    """Hand-checked rows, the OOM runs absent, units: percent columns become fractions under ``pooled``."""
    ref = load_reference("libmtl_resnet50")
    assert ref.protocol == "pooled" and "resnet_results.pdf" in ref.source and "JMLR 2023" in ref.source
    assert len(ref.rows) == 8 * 13 - len(LIBMTL_R50_OOM)
    assert len({r.name for r in ref.rows}) == len(ref.rows)
    for name, published in LIBMTL_R50.items():
        row = ref.row(name)
        assert [row.arch, row.weighting] == name.split("/") and row.params_ratio is None
        assert row.raw == dict(zip(NYU_COLUMNS, published))
    assert not LIBMTL_R50_OOM & {r.name for r in ref.rows}
    pooled = ref.values(ref.row("HPS/EW"), "pooled")  # within-t stays in percent under pooled
    assert pooled["segmentation/miou"] == pytest.approx(0.5410) and pooled["normal/within_30"] == 72.06
    assert ref.values(ref.row("HPS/EW"), "mtan_paper")["normal/within_30"] == pytest.approx(0.7206)


def test_libmtl_resnet50_matches_the_pdf_text() -> None:
    """Every row of Tables 2-9 of the PDF text (read here) is shipped with the same nine numbers; OOM ones not."""
    text = PUBLISHED_TEXT.read_text(encoding="utf-8")
    published, oom, arch = {}, set(), None
    for line in text.split("\n"):
        title = re.search(r"Table \d+: Performance on .* on (.+) \[\d+\] architecture", line)
        if title:
            arch = title.group(1)
            continue
        cells = re.sub(r"\[\d+\]", "", line).split()
        if arch and len(cells) == 10 and all(re.fullmatch(r"\d+\.\d+", c) for c in cells[1:]):
            published[f"{arch}/{cells[0]}"] = [float(c) for c in cells[1:]]
        elif arch and len(cells) == 2 and cells[1] == "OOM":
            oom.add(f"{arch}/{cells[0]}")
    ref = load_reference("libmtl_resnet50")
    assert oom == LIBMTL_R50_OOM and len(published) + len(oom) == 8 * 13
    assert {r.name: [r.raw[c] for c in NYU_COLUMNS] for r in ref.rows} == published
    assert {k: published[k] for k in LIBMTL_R50} == LIBMTL_R50


@pytest.mark.slow
def test_cli_libmtl_resnet50_reference_and_baseline(tmp_path: Path) -> None:
    """``--reference libmtl_resnet50 --baseline reference:libmtl_resnet50/HPS/EW``: greyed rows and Δm vs HPS/EW."""
    hps_ew = dict(zip(NYU_COLUMNS, LIBMTL_R50["HPS/EW"]))
    mtan_dwa = dict(zip(NYU_COLUMNS, LIBMTL_R50["MTAN/DWA"]))
    fake_run(tmp_path / "runs", "mtan-s0", "mtan", 0, in_units(mtan_dwa, "pooled"), "pooled")
    cmd = [
        sys.executable,
        "-m",
        "mtlkit",
        "report",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "r"),
        "--no-models",
        "--reference",
        "libmtl_resnet50",
        "--baseline",
        "reference:libmtl_resnet50/HPS/EW",
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert sum(line.startswith("| – | *") for line in md.splitlines()) == 95  # the greyed rows, no #P published
    assert "| – | *HPS* | *EW [libmtl_resnet50]* | *0.5410* | *0.7578* | *0.3771* |" in md
    assert "resnet_results.pdf" in md
    [table] = json.loads((tmp_path / "r" / "tables.json").read_text())["tables"]
    [run] = table["rows"]
    assert run["delta_m"] == pytest.approx(ref_delta(mtan_dwa, hps_ew))


#: Misra et al. (CVPR 2016) Table 5, as printed (normals: mean, median, within 11.25/22.5/30; segmentation:
#: pixel accuracy, mean IU, f.w. IU)
CROSS_STITCH_TABLE5 = {
    "One-task": (34.8, 19.0, 38.3, 53.5, 59.2, 46.6, 18.4, 33.1),
    "Split conv4": (34.7, 19.1, 38.2, 53.4, 59.2, 47.8, 19.2, 33.8),
    "Cross-stitch": (34.1, 18.2, 39.0, 54.4, 60.2, 47.2, 19.3, 34.0),
}


def test_cross_stitch_paper_rows_map_to_task_metric_keys() -> None:
    """Every column is a ``task/metric`` the segmentation / normal kinds log; values converted per protocol."""
    from mtlkit.tasks import make_task

    logged = {
        f"{t.name}/{m}"
        for t in (make_task("segmentation", "segmentation", 40), make_task("normal", "normal"))
        for m in (*t.metrics, *t.spec.reported_metrics)
    }
    for name in ("cross_stitch_paper", "cross_stitch_ablations"):
        ref = load_reference(name)
        assert ref.protocol == "pooled" and "CVPR 2016" in ref.source and "Table" in ref.source
        assert ref.meta["dataset"] == "nyuv2" and "40 classes" in ref.meta["protocol"]
        for row in ref.rows:
            assert set(row.raw) <= logged and len(row.raw) == 8, row.name
    paper = load_reference("cross_stitch_paper")
    assert [r.name for r in paper.rows] == ["One-task", "Ensemble", "Split conv4", "MTL-shared", "Cross-stitch"]
    for name, published in CROSS_STITCH_TABLE5.items():
        assert tuple(paper.row(name).raw.values()) == published
    pooled = paper.values(paper.row("Cross-stitch"), "pooled")
    assert pooled["segmentation/fwiou"] == pytest.approx(0.340) and pooled["segmentation/pix_acc"] == pytest.approx(
        0.472
    )
    assert pooled["normal/within_30"] == pytest.approx(60.2) and pooled["normal/mean"] == pytest.approx(34.1)
    assert paper.values(paper.row("Cross-stitch"), "mtan_official")["normal/within_30"] == pytest.approx(0.602)
    # the paper's Table 5 cross-stitch row is Table 3's one-task-initialised row, number for number
    ablations = load_reference("cross_stitch_ablations")
    assert len(ablations.rows) == 10
    assert ablations.row("Table 3: init One-task").raw == paper.row("Cross-stitch").raw
    assert ablations.row("Table 2: alpha lr scale 1000").raw["normal/within_11.25"] == 39.2
