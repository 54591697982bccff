"""The cross-stitch paper's figures in reports: per-channel alphas per stitch point (Sec. 5.4) and the
data-starved analysis (Sec. 6.3): the numbers plotted are the inputs (checked in the data written beside
each figure, not in pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy.stats import spearmanr

from helpers.report_fixtures import FakeBuilder, FakeStitchNet, fake_loader, write_run
from mtlkit.report import ReportOptions, make_report
from mtlkit.report.plots import stitch_channel_alphas
from mtlkit.tasks import depth_task, segmentation_task

CLASSES = ["wall", "floor", "bag", "lamp", "sofa", "bed", "sink"]


def test_channel_alphas_are_the_sorted_own_and_other_weights() -> None:
    """alpha_S = alpha[i, i, c], alpha_D = sum over k != i of alpha[i, k, c]; each sorted; both layouts."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 5))
    names = ["a", "b", "c"]
    got = stitch_channel_alphas({"p": torch.from_numpy(a)}, names)["p"]
    for i, name in enumerate(names):
        own = [a[i, i, c] for c in range(5)]
        other = [sum(a[i, k, c] for k in range(3) if k != i) for c in range(5)]
        np.testing.assert_allclose(got[name]["alpha_s"], sorted(own), rtol=1e-6)
        np.testing.assert_allclose(got[name]["alpha_d"], sorted(other), rtol=1e-6)
    channels_first = stitch_channel_alphas({"p": np.moveaxis(a, 2, 0)}, names)["p"]
    for name in names:
        for which in ("alpha_s", "alpha_d"):
            np.testing.assert_allclose(channels_first[name][which], got[name][which], rtol=1e-6)
    one = stitch_channel_alphas({"q": np.array([[0.9, 0.1], [0.3, 0.7]])}, ["a", "b"])["q"]
    assert one == {"a": {"alpha_s": [0.9], "alpha_d": [0.1]}, "b": {"alpha_s": [0.7], "alpha_d": [0.3]}}
    with pytest.raises(ValueError, match="not K x K"):
        stitch_channel_alphas({"r": np.zeros((2, 3))}, ["a", "b"])


def test_report_plots_the_channel_alphas_of_a_stitch_run(tmp_path: Path) -> None:
    final = {"segmentation/miou": 0.4, "segmentation/pix_acc": 0.6, "depth/abs_err": 0.5, "depth/rel_err": 0.2}
    write_run(tmp_path / "runs", "cross_stitch-s0", "cross_stitch", "equal", 0, final)
    files = make_report([tmp_path / "runs"], tmp_path / "r", ReportOptions(), loader=fake_loader)
    png = tmp_path / "r" / "figures" / "stitch_channels_cross_stitch-s0.png"
    assert png in files.figures and imread(png).shape[0] > 100
    assert "](figures/stitch_channels_cross_stitch-s0.png)" in files.markdown.read_text()
    data = json.loads((tmp_path / "r" / "figures" / "stitch_channels_cross_stitch-s0.json").read_text())
    alphas = FakeStitchNet([segmentation_task(7), depth_task()]).stitch_alphas()
    assert data["tasks"] == ["segmentation", "depth"]
    assert data["points"] == stitch_channel_alphas(alphas, data["tasks"])
    # the fake's per-channel point: 0.7 own, 0.3 from depth, in float32 (the alphas' dtype)
    assert data["points"]["dec1"]["segmentation"]["alpha_s"] == pytest.approx([0.7] * 4, rel=1e-6)
    assert data["points"]["dec1"]["segmentation"]["alpha_d"] == pytest.approx([0.3] * 4, rel=1e-6)


def _class_runs(root: Path, single: list[list[float]], stitch: list[list[float]]) -> None:
    """Single-task and cross-stitch runs (one per seed) whose segmentation logs a per-class IoU."""

    def final(ious: list[float]) -> dict[str, float]:
        return {
            "segmentation/miou": float(np.mean(ious)),
            "segmentation/pix_acc": 0.6,
            "depth/abs_err": 0.5,
            "depth/rel_err": 0.2,
            **{f"segmentation/iou_{c}": v for c, v in zip(CLASSES, ious)},
        }

    for arch, per_seed in (("single", single), ("cross_stitch", stitch)):
        for seed, ious in enumerate(per_seed):
            run = write_run(root, f"{arch}-s{seed}", arch, "equal", seed, final(ious))
            results = json.loads((run / "results.json").read_text())
            results["tasks"][0]["options"] = {"class_names": CLASSES}
            (run / "results.json").write_text(json.dumps(results))


def test_data_starved_figure_plots_per_class_gain_against_training_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    single = rng.uniform(0.1, 0.6, size=(2, 7)).tolist()
    stitch = rng.uniform(0.1, 0.6, size=(2, 7)).tolist()
    _class_runs(tmp_path / "runs", single, stitch)
    files = make_report([tmp_path / "runs"], tmp_path / "r", ReportOptions(), loader=fake_loader)
    md = files.markdown.read_text()
    assert "## Data-starved classes" in md
    stem = tmp_path / "r" / "figures" / "class_gain_scenes-segmentation7-depth1_segmentation"
    assert stem.with_suffix(".png") in files.figures and imread(stem.with_suffix(".png")).shape[0] > 100
    assert f"](figures/{stem.name}.png)" in md
    data = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".json") in files.data
    # the counts: every labelled pixel of the (fake) training split, class by class
    targets = torch.stack([s["segmentation"] for s in FakeBuilder().dataset("train", train=False)])
    assert data["pixels"] == [int((targets == c).sum()) for c in range(7)]
    assert data["classes"] == CLASSES and data["baseline"] == "Single-Task"
    # the gain: seed-mean IoU of the row minus the baseline's, in points
    (row,) = data["rows"]
    assert row["label"] == "Cross-Stitch / Equal"
    expected = [100 * (np.mean([s[c] for s in stitch]) - np.mean([s[c] for s in single])) for c in range(7)]
    assert row["gain"] == pytest.approx(expected, rel=1e-12)
    assert data["baseline_iou"] == pytest.approx(np.mean(single, axis=0).tolist(), rel=1e-12)
    rho = spearmanr(data["pixels"], expected).statistic
    assert row["spearman"] == pytest.approx(rho) and f"Cross-Stitch / Equal {rho:+.2f}" in md


def test_data_starved_figure_needs_per_class_iou_and_a_loadable_split(tmp_path: Path) -> None:
    """Without per-class IoU there is no section; a run whose labels cannot be read is a note."""
    final = {"segmentation/miou": 0.4, "segmentation/pix_acc": 0.6, "depth/abs_err": 0.5, "depth/rel_err": 0.2}
    write_run(tmp_path / "plain", "single-s0", "single", "equal", 0, final)
    write_run(tmp_path / "plain", "mtan-s0", "mtan", "equal", 0, final)
    md = make_report([tmp_path / "plain"], tmp_path / "r1", ReportOptions(), loader=fake_loader).markdown.read_text()
    assert "Data-starved" not in md
    _class_runs(tmp_path / "runs", [[0.3] * 7], [[0.4] * 7])

    def broken(run_dir: Path) -> tuple:
        raise FileNotFoundError("no dataset here")

    md = make_report([tmp_path / "runs"], tmp_path / "r2", ReportOptions(), loader=broken).markdown.read_text()
    assert "segmentation: skipped, the training labels could not be counted (FileNotFoundError" in md
    md = make_report([tmp_path / "runs"], tmp_path / "r3", ReportOptions(models=False)).markdown.read_text()
    assert "segmentation: skipped, model loading turned off" in md


def test_segmentation_class_counts_leave_out_ignored_pixels() -> None:
    task = segmentation_task(4, ignore_index=255)
    target = torch.tensor([[0, 0, 3], [255, 1, 3]])
    assert task.spec.class_counts(task, target).tolist() == [2, 1, 0, 2]
    assert depth_task().spec.class_counts(depth_task(), torch.zeros(1, 2, 2)) is None


def test_channel_alphas_of_the_real_cross_stitch_units() -> None:
    """The registered cross-stitch model's per-channel units: one alpha_S / alpha_D per channel, at init
    Misra's alpha_S and 1 - alpha_S (two tasks)."""
    from mtlkit.models import build_model

    tasks = [segmentation_task(3), depth_task()]
    model = build_model("cross_stitch", tasks, 0.125, per_channel=True, alpha_s=0.8)
    alphas = model.stitch_alphas()
    profiles = stitch_channel_alphas(alphas, [t.name for t in tasks])
    assert list(profiles) == list(alphas)
    for point, a in alphas.items():
        for name in ("segmentation", "depth"):
            assert profiles[point][name]["alpha_s"] == pytest.approx([0.8] * a.shape[2], rel=1e-6)
            assert profiles[point][name]["alpha_d"] == pytest.approx([0.2] * a.shape[2], rel=1e-6)


def test_each_row_gains_over_the_baseline_with_its_own_settings(tmp_path: Path) -> None:
    """Two settings of a data key (augmentation off / on): each multi-task row is compared with the single-task
    row of its own setting (the row its delta_m uses), not with the first single-task row of the table."""
    ious = {
        ("single", False): [0.30] * 7,
        ("single", True): [0.50] * 7,
        ("cross_stitch", False): [0.35] * 7,
        ("cross_stitch", True): [0.45] * 7,
    }
    for (arch, augment), values in ious.items():
        final = {
            "segmentation/miou": float(np.mean(values)),
            "segmentation/pix_acc": 0.6,
            "depth/abs_err": 0.5,
            "depth/rel_err": 0.2,
            **{f"segmentation/iou_{c}": v for c, v in zip(CLASSES, values)},
        }
        run = write_run(
            tmp_path / "runs",
            f"{arch}-aug{int(augment)}",
            arch,
            "equal",
            0,
            final,
            extra_config={"dataset": {"augment": augment}},
        )
        results = json.loads((run / "results.json").read_text())
        results["tasks"][0]["options"] = {"class_names": CLASSES}
        (run / "results.json").write_text(json.dumps(results))
    files = make_report([tmp_path / "runs"], tmp_path / "r", ReportOptions(), loader=fake_loader)
    (path,) = [p for p in files.data if p.name.startswith("class_gain_")]
    data = json.loads(path.read_text())
    gains = {r["label"]: (r["baseline"], r["gain"]) for r in data["rows"] if r["arch"] == "cross_stitch"}
    assert len(gains) == 2 and data["baseline"] == "Single-Task with the same settings"
    by_gain = sorted(gains.values(), key=lambda v: v[1][0])
    # augmentation on: 45 - 50 = -5 points against its own baseline (not 45 - 30 = +15); off: 35 - 30 = +5
    assert by_gain[0][1] == pytest.approx([-5.0] * 7) and "augment=True" in by_gain[0][0]
    assert by_gain[1][1] == pytest.approx([5.0] * 7) and "augment=False" in by_gain[1][0]
