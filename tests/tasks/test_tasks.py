"""Task kinds: registry, options, and the new kinds' losses and metrics against slow NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.metrics.binary import binary_metrics
from mtlkit.metrics.edge import edge_metrics, thresholds
from mtlkit.metrics.regression import regression_metrics
from mtlkit.tasks import (
    TASK_KINDS,
    Task,
    binary_task,
    depth_task,
    edge_task,
    make_task,
    normal_task,
    regression_task,
    segmentation_task,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------- registry and options


def test_builtin_kinds_are_registered() -> None:
    assert set(TASK_KINDS.names()) >= {
        "segmentation",
        "depth",
        "normal",
        "classification",
        "binary",
        "edge",
        "regression",
    }


def test_options_are_checked_and_round_trip() -> None:
    t = segmentation_task(3, "seg", ignore_index=255, class_names=["a", "b", "c"])
    assert t.option("ignore_index") == 255 and Task.from_dict(t.to_dict()) == t
    assert make_task("regression", "r", 2, loss="l2").option("invalid_value") is None
    with pytest.raises(ConfigError, match="unknown option 'ignore'"):
        binary_task("m", ignore=3)
    with pytest.raises(ConfigError, match="class_names"):
        segmentation_task(3, class_names=["a"])
    with pytest.raises(ConfigError, match="loss must be l1 or l2"):
        regression_task("r", loss="huber")
    with pytest.raises(ConfigError, match="unknown task kind 'nope'"):
        make_task("nope", "x", 1)
    with pytest.raises(ConfigError, match="has 1 channel"):
        make_task("binary", "x", 3)


def test_class_names_add_per_class_iou() -> None:
    t = segmentation_task(3, "seg", class_names=["sky", "road", "car"])
    meter = t.new_meter()
    target = torch.tensor([[[0, 1], [2, -1]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 3).permute(0, 3, 1, 2).float()
    meter.update(logits, target)
    out = meter.compute()
    # sky: TP 1, union 2 (pred at ignore pixel left out) -> 1; road: TP 1 / union 2; car: 0 / 1
    assert out["iou_sky"] == 1.0 and out["iou_road"] == 0.5 and out["iou_car"] == 0.0
    assert out["miou"] == pytest.approx(0.5)


def test_segmentation_ignore_index_option() -> None:
    t = segmentation_task(2, ignore_index=255)
    logits = torch.randn(1, 2, 3, 3)
    target = torch.randint(0, 2, (1, 3, 3))
    target[0, 0] = 255
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(t.loss(logits, target), ref)


# ---------------------------------------------------------------------- binary


def _bce_ref(logits, target, ignore, pos_weight=1.0):
    p = _sigmoid(logits.astype(np.float64))
    total, n = 0.0, 0
    for x, y in zip(p.ravel(), target.ravel()):
        if y == ignore:
            continue
        total += -(pos_weight * y * math.log(x) + (1 - y) * math.log(1 - x))
        n += 1
    return total / n


def test_binary_loss_matches_reference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 1, 5, 6)).astype(np.float32)
    target = rng.integers(0, 2, size=(2, 5, 6))
    target[0, 0, :3] = 255
    t = binary_task("fg", ignore_index=255, pos_weight=2.5)
    got = float(t.loss(torch.from_numpy(logits), torch.from_numpy(target)))
    assert got == pytest.approx(_bce_ref(logits, target, 255, 2.5), rel=1e-5)


def _binary_ref(prob, target, ignore):
    tp = fp = fn = 0
    for p, y in zip(prob.ravel(), target.ravel()):
        if y == ignore:
            continue
        if p >= 0.5 and y == 1:
            tp += 1
        elif p >= 0.5:
            fp += 1
        elif y == 1:
            fn += 1
    best = 0.0
    for i in range(256):
        th = i / 255
        ps, rs = [], []
        for img_p, img_y in zip(prob, target):
            keep = img_y != ignore
            pos = (img_p >= th) & keep
            t = (img_y == 1) & keep
            tpi = int((pos & t).sum())
            ps.append(tpi / pos.sum() if pos.sum() else 0.0)
            rs.append(tpi / t.sum() if t.sum() else 0.0)
        p, r = np.mean(ps), np.mean(rs)
        f = 1.3 * p * r / (0.3 * p + r) if 0.3 * p + r > 0 else 0.0
        best = max(best, f)
    return {"iou": tp / (tp + fp + fn), "max_f": best}


def test_binary_metrics_match_reference_and_stream() -> None:
    rng = np.random.default_rng(1)
    prob = rng.random((4, 7, 9))
    target = (rng.random((4, 7, 9)) < prob * 0.8 + 0.1).astype(np.int64)
    target[1, :2] = -1
    ref = _binary_ref(prob, target, -1)
    got = binary_metrics(prob, target)
    assert got["iou"] == pytest.approx(ref["iou"]) and got["max_f"] == pytest.approx(ref["max_f"])
    meter = binary_task("fg").new_meter()
    for i in range(4):  # one image at a time: the same set-level numbers
        meter.update(torch.from_numpy(prob[i : i + 1, None]), torch.from_numpy(target[i : i + 1]))
    assert meter.compute() == pytest.approx(got)


# ---------------------------------------------------------------------- edge


def _balanced_bce_ref(logits, target, ignore, w=None):
    p = _sigmoid(logits.astype(np.float64)).ravel()
    y = target.ravel()
    keep = y != ignore
    if w is None:
        w = float(((y == 0) & keep).sum()) / keep.sum()
    total = 0.0
    for x, t, k in zip(p, y, keep):
        if k:
            total += -w * math.log(x) if t == 1 else -(1 - w) * math.log(1 - x)
    return total / keep.sum()


@pytest.mark.parametrize("pos_weight", [None, 0.95])
def test_edge_loss_matches_reference(pos_weight) -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    target = (rng.random((2, 6, 6)) < 0.2).astype(np.int64)
    target[1, 0] = -1
    t = edge_task(pos_weight=pos_weight)
    got = float(t.loss(torch.from_numpy(logits), torch.from_numpy(target)))
    assert got == pytest.approx(_balanced_bce_ref(logits, target, -1, pos_weight), rel=1e-5)


def _near(a, pts, r):
    return any((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 <= r * r for b in pts)


def _edge_ref(prob, target, ignore, tolerance):
    """Brute force: every pixel's distance to every edge pixel, per threshold."""
    counts = np.zeros((4, 99))
    for img_p, img_y in zip(prob, target):
        h, w = img_p.shape
        r = tolerance * math.hypot(h, w)
        keep = img_y != ignore
        gt = [(i, j) for i in range(h) for j in range(w) if img_y[i, j] == 1]
        for k, th in enumerate(thresholds()):
            pred = [(i, j) for i in range(h) for j in range(w) if keep[i, j] and img_p[i, j] >= th]

            counts[0, k] += sum(_near(a, gt, r) for a in pred)
            counts[1, k] += len(pred)
            counts[2, k] += sum(_near(g, pred, r) for g in gt)
            counts[3, k] += len(gt)
    prec = np.where(counts[1] > 0, counts[0] / np.maximum(counts[1], 1), 0)
    rec = counts[2] / counts[3]
    f = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0)
    return float(f.max())


def test_edge_ods_f_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    target = np.zeros((2, 12, 14), dtype=np.int64)
    target[0, 5, 2:12] = 1  # a horizontal edge
    target[1, 2:10, 7] = 1  # a vertical edge
    target[1, 0, :4] = -1
    prob = rng.random((2, 12, 14)) * 0.5
    prob[0, 6, 3:11] += 0.45  # one pixel off the true edge: matched within the tolerance
    prob[1, 2:10, 7] += 0.4
    tol = 2.0 / math.hypot(12, 14)  # two pixels
    got = edge_metrics(prob, target, tolerance=tol)["ods_f"]
    assert got == pytest.approx(_edge_ref(prob, target, -1, tol))
    assert got > edge_metrics(prob, target, tolerance=0.0)["ods_f"]  # the offset edge only counts with tolerance
    meter = edge_task(tolerance=tol).new_meter()
    meter.update(torch.from_numpy(prob[:1, None]), torch.from_numpy(target[:1]))
    meter.update(torch.from_numpy(prob[1:, None]), torch.from_numpy(target[1:]))
    assert meter.compute()["ods_f"] == pytest.approx(got)


# ---------------------------------------------------------------------- regression


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_regression_loss_and_metrics_match_reference(loss) -> None:
    rng = np.random.default_rng(4)
    pred = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    target = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    target[0, 1, :2] = -99.0
    t = regression_task("r", 3, loss=loss, invalid_value=-99.0)
    errs = [float(p) - float(y) for p, y in zip(pred.ravel(), target.ravel()) if y != -99.0]
    want = np.mean(np.abs(errs)) if loss == "l1" else np.mean(np.square(errs))
    assert float(t.loss(torch.from_numpy(pred), torch.from_numpy(target))) == pytest.approx(want, rel=1e-5)
    got = regression_metrics(pred, target, -99.0)
    assert got["mae"] == pytest.approx(np.mean(np.abs(errs)), rel=1e-9)
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(np.square(errs))), rel=1e-9)


def test_regression_nan_invalid_value() -> None:
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, float("nan")], [3.0, -1.0]]]])
    t = regression_task("r", invalid_value=float("nan"))
    loss = t.loss(pred, target)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(5 / 3) and torch.isfinite(pred.grad).all()
    assert t.check_target(target[0].numpy()) is None
    assert "NaN" in regression_task("r").check_target(target[0].numpy())


# ---------------------------------------------------------------------- augmentation is the kind's


def test_kinds_own_their_augmentation() -> None:
    rows, cols = torch.tensor([1, 0]), torch.tensor([2, 1, 0])
    depth = torch.arange(6.0).reshape(1, 2, 3) + 1
    d = depth_task()
    assert torch.equal(d.spec.zoom(d, d.spec.resize(d, depth, rows, cols), 2.0), depth[:, [1, 0]][:, :, [2, 1, 0]] / 2)
    inv = d.with_options(inverse=True)
    assert torch.equal(inv.spec.zoom(inv, depth, 2.0), depth * 2)
    n = normal_task()
    normals = torch.zeros(3, 1, 2)
    normals[:, 0, 0] = torch.tensor([0.6, 0.0, 0.8])
    flipped = n.spec.flip(n, normals)
    assert torch.equal(flipped[:, 0, 1], torch.tensor([-0.6, 0.0, 0.8])) and flipped[:, 0, 0].abs().sum() == 0
    r = regression_task("r", 2)
    assert torch.equal(r.spec.flip(r, depth), torch.flip(depth, dims=[-1]))
