"""Evaluation protocols (pooled, mtan_official, mtan_paper) against slow references written from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlkit.config import load_config
from mtlkit.metrics import MetricError, segmentation_metrics
from mtlkit.metrics.protocols import PROTOCOLS, describe, protocol_meter
from mtlkit.tasks import classification_task, depth_task, normal_task, segmentation_task
from mtlkit.train.evaluate import evaluate

C = 5


def _data(n: int = 7, h: int = 6, w: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random predictions and targets with unlabelled pixels, missing depths and missing normals."""
    g = torch.Generator().manual_seed(seed)
    seg_t = torch.randint(0, C, (n, h, w), generator=g)
    seg_t[torch.rand(n, h, w, generator=g) < 0.2] = -1
    seg_t[3] = -1  # an image with no labelled pixel
    seg_p = torch.randn(n, C, h, w, generator=g)
    depth_t = torch.rand(n, 1, h, w, generator=g) + 0.5
    depth_t[torch.rand(n, 1, h, w, generator=g) < 0.3] = 0
    depth_p = torch.rand(n, 1, h, w, generator=g) + 0.5
    normal_t = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    normal_t[:, :, torch.rand(h, w, generator=g) < 0.25] = 0
    normal_p = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g) + normal_t, dim=1)
    return {
        "seg_p": seg_p,
        "seg_t": seg_t,
        "depth_p": depth_p,
        "depth_t": depth_t,
        "normal_p": normal_p,
        "normal_t": normal_t,
    }


# ---------------------------------------------------------------- slow references, pixel by pixel


def ref_per_image_seg(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """The paper's formula: per image, IoU over classes in prediction or target (labelled pixels only)."""
    mious, accs = [], []
    for p, t in zip(pred, target):
        labelled = t >= 0
        if not labelled.any():
            continue
        ious = []
        for c in range(C):
            union = ((p == c) | (t == c)) & labelled
            if union.sum() == 0:
                continue
            inter = (p == c) & (t == c)
            ious.append(inter.sum() / union.sum())
        mious.append(np.mean(ious))
        accs.append(((p == t) & labelled).sum() / labelled.sum())
    return float(np.mean(mious)), float(np.mean(accs))


def ref_pooled_seg(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """One confusion matrix over the set: IoU_c = TP / (TP + FP + FN), mean over classes seen."""
    lab = target >= 0
    ious = []
    for c in range(C):
        tp = ((pred == c) & (target == c) & lab).sum()
        fp = ((pred == c) & (target != c) & lab).sum()
        fn = ((pred != c) & (target == c) & lab).sum()
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious)), float(((pred == target) & lab).sum() / lab.sum())


def ref_batch_depth(pred: np.ndarray, target: np.ndarray, b: int) -> tuple[float, float]:
    """Mean over batches of b images of each batch's pixel-mean abs and rel error."""
    abs_, rel = [], []
    for i in range(0, len(pred), b):
        p, t = pred[i : i + b], target[i : i + b]
        m = t != 0
        abs_.append(np.abs(p[m] - t[m]).mean())
        rel.append((np.abs(p[m] - t[m]) / t[m]).mean())
    return float(np.mean(abs_)), float(np.mean(rel))


def ref_angles(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    m = np.any(target != 0, axis=1)
    cos = np.clip((pred * target).sum(axis=1)[m], -1, 1)
    return np.degrees(np.arccos(cos))


def ref_batch_normal(pred: np.ndarray, target: np.ndarray, b: int) -> dict[str, float]:
    """Mean over batches of: mean angle, median angle, fraction of angles below 11.25/22.5/30."""
    rows = []
    for i in range(0, len(pred), b):
        a = ref_angles(pred[i : i + b], target[i : i + b])
        rows.append([a.mean(), np.median(a), (a < 11.25).mean(), (a < 22.5).mean(), (a < 30).mean()])
    mean = np.mean(rows, axis=0)
    return dict(zip(["mean", "median", "within_11.25", "within_22.5", "within_30"], mean.tolist()))


def _score(protocol: str, d: dict, chunk: int, feed: int) -> dict[str, dict[str, float]]:
    """Every task's metrics under ``protocol``, fed to the meters ``feed`` images at a time."""
    tasks = {"seg": segmentation_task(C), "depth": depth_task(), "normal": normal_task()}
    out = {}
    for key, task in tasks.items():
        meter = protocol_meter(task, protocol, chunk)
        for i in range(0, d[f"{key}_p"].shape[0], feed):
            meter.update(task.postprocess(d[f"{key}_p"][i : i + feed]), d[f"{key}_t"][i : i + feed])
        out[key] = meter.compute()
    return out


@pytest.mark.parametrize("feed", [1, 3, 7])
def test_mtan_paper_matches_the_formulas(feed: int) -> None:
    d = _data()
    got = _score("mtan_paper", d, chunk=2, feed=feed)
    miou, acc = ref_per_image_seg(d["seg_p"].argmax(1).numpy(), d["seg_t"].numpy())
    assert got["seg"]["miou"] == pytest.approx(miou, abs=1e-12)
    assert got["seg"]["pix_acc"] == pytest.approx(acc, abs=1e-12)
    a, r = ref_batch_depth(d["depth_p"].double().numpy(), d["depth_t"].double().numpy(), 2)
    assert got["depth"] == pytest.approx({"abs_err": a, "rel_err": r}, abs=1e-12)
    assert got["normal"] == pytest.approx(
        ref_batch_normal(d["normal_p"].double().numpy(), d["normal_t"].double().numpy(), 2), abs=1e-5
    )


@pytest.mark.parametrize("chunk", [2, 3])
def test_mtan_official_matches_the_formulas(chunk: int) -> None:
    d = _data()
    got = _score("mtan_official", d, chunk=chunk, feed=4)
    miou, acc = ref_pooled_seg(d["seg_p"].argmax(1).numpy(), d["seg_t"].numpy())
    assert {k: got["seg"][k] for k in ("miou", "pix_acc")} == pytest.approx({"miou": miou, "pix_acc": acc}, abs=1e-12)
    # FCN's mean class accuracy and f.w. IoU come from the same whole-set confusion matrix
    whole = segmentation_metrics(d["seg_p"].argmax(1).numpy(), d["seg_t"].numpy(), d["seg_p"].shape[1])
    assert {k: got["seg"][k] for k in ("macc", "fwiou")} == pytest.approx(
        {k: whole[k] for k in ("macc", "fwiou")}, abs=1e-12
    )
    a, r = ref_batch_depth(d["depth_p"].double().numpy(), d["depth_t"].double().numpy(), chunk)
    assert got["depth"] == pytest.approx({"abs_err": a, "rel_err": r}, abs=1e-12)
    normal = ref_batch_normal(d["normal_p"].double().numpy(), d["normal_t"].double().numpy(), chunk)
    assert got["normal"] == pytest.approx(normal, abs=1e-5)
    assert all(0 <= got["normal"][k] <= 1 for k in ("within_11.25", "within_22.5", "within_30"))


def test_pooled_matches_the_formulas_and_differs_from_the_batch_means() -> None:
    d = _data()
    got = _score("pooled", d, chunk=2, feed=3)
    miou, acc = ref_pooled_seg(d["seg_p"].argmax(1).numpy(), d["seg_t"].numpy())
    assert {k: got["seg"][k] for k in ("miou", "pix_acc")} == pytest.approx({"miou": miou, "pix_acc": acc}, abs=1e-12)
    # FCN's mean class accuracy and f.w. IoU come from the same whole-set confusion matrix
    whole = segmentation_metrics(d["seg_p"].argmax(1).numpy(), d["seg_t"].numpy(), d["seg_p"].shape[1])
    assert {k: got["seg"][k] for k in ("macc", "fwiou")} == pytest.approx(
        {k: whole[k] for k in ("macc", "fwiou")}, abs=1e-12
    )
    dp, dt = d["depth_p"].double().numpy(), d["depth_t"].double().numpy()
    m = dt != 0
    assert got["depth"]["abs_err"] == pytest.approx(np.abs(dp[m] - dt[m]).mean(), abs=1e-12)
    angles = ref_angles(d["normal_p"].double().numpy(), d["normal_t"].double().numpy())
    assert got["normal"]["median"] == pytest.approx(np.median(angles), abs=1e-4)
    assert got["normal"]["within_30"] == pytest.approx(100 * (angles < 30).mean(), abs=1e-9)
    paper = _score("mtan_paper", d, chunk=2, feed=3)
    assert paper["seg"]["miou"] != pytest.approx(got["seg"]["miou"], abs=1e-6)
    assert paper["normal"]["median"] != pytest.approx(got["normal"]["median"], abs=1e-6)


def test_hand_worked_per_image_miou() -> None:
    """Image 1: classes 0 and 1 ([0,0|1,-1] vs pred [0,1|1,1]); image 2: all class 2, predicted right."""
    target = torch.tensor([[[0, 0], [1, -1]], [[2, 2], [2, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
    meter = protocol_meter(segmentation_task(3), "mtan_paper", 2)
    meter.update(pred, target)
    # image 1: IoU0 = 1/2, IoU1 = 1/2 (the pred on the unlabelled pixel is outside the union); acc 2/3
    assert meter.compute() == pytest.approx({"miou": (0.5 + 1.0) / 2, "pix_acc": (2 / 3 + 1) / 2})


def test_classification_and_empty_meters() -> None:
    task = classification_task("c", 3)
    meter = protocol_meter(task, "mtan_paper", 2)
    meter.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert meter.compute()["accuracy"] == pytest.approx(200 / 3)
    empty = protocol_meter(depth_task(), "mtan_official", 2)
    assert all(math.isnan(v) for v in empty.compute().values())
    with pytest.raises(MetricError, match="unknown evaluation protocol"):
        protocol_meter(task, "paper", 2)
    assert "per-image" in describe("mtan_paper", 2) and "batches of 2" in describe("mtan_official", 2)


def test_evaluate_and_config_use_the_protocol() -> None:
    cfg = load_config(None, ["eval.protocol=mtan_paper"])
    assert cfg.eval.protocol == "mtan_paper" and cfg.eval.select_best
    d = _data()
    tasks = [segmentation_task(C)]

    class Fixed(torch.nn.Module):
        def forward(self, x, tasks=None):
            return {"segmentation": d["seg_p"][x[:, 0, 0, 0].long()]}

    batches = [
        {
            "image": torch.arange(i, min(i + 3, 7)).float().view(-1, 1, 1, 1).expand(-1, 3, 1, 1),
            "segmentation": d["seg_t"][i : i + 3],
        }
        for i in range(0, 7, 3)
    ]
    for protocol in PROTOCOLS:
        out = evaluate(Fixed(), tasks, batches, torch.device("cpu"), protocol=protocol, protocol_batch=2)
        ref = ref_per_image_seg if protocol == "mtan_paper" else ref_pooled_seg
        assert out["segmentation/miou"] == pytest.approx(
            ref(d["seg_p"].argmax(1).numpy(), d["seg_t"].numpy())[0], abs=1e-12
        )


def test_training_records_the_protocol_and_evaluate_cli_switches_it(tiny_cfg, tmp_path) -> None:
    """A 1-epoch run under mtan_paper without model selection; then `mtlkit evaluate --protocol pooled`."""
    import json

    from mtlkit.cli.main import main
    from mtlkit.train.trainer import train

    cfg = tiny_cfg(
        train={"epochs": 1, "batch_size": 4, "progress": False, "loggers": [], "amp": False},
        eval={"protocol": "mtan_paper", "batch_size": 2, "select_best": False, "report_last": 10},
    )
    assert cfg.train.amp == "off"  # YAML's bare `off` is false
    run = train(cfg, run_dir=tmp_path / "r")
    results = json.loads((run / "results.json").read_text())
    assert results["eval"] == {"protocol": "mtan_paper", "batch_size": 2, "select_best": False, "report_last": 10}
    assert results["best"] is None and "no best epoch" in results["best_note"]
    assert not (run / "checkpoints" / "best.pt").exists()
    assert main(["evaluate", str(run), "--checkpoint", "last", "--protocol", "pooled", "--device", "cpu"]) == 0
    pooled = json.loads((run / "eval-val-last-pooled.json").read_text())
    assert pooled["protocol"] == "pooled"
    assert main(["evaluate", str(run), "--checkpoint", "last", "--protocol", "mtan_paper", "--device", "cpu"]) == 0
    paper = json.loads((run / "eval-val-last-mtan_paper.json").read_text())
    final = results["final"]
    assert {k: paper[k] for k in final} == pytest.approx(final, rel=1e-5)  # the trainer's own evaluation
    assert pooled["segmentation/miou"] != pytest.approx(final["segmentation/miou"], abs=1e-9)
