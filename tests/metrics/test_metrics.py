"""Metrics: slow plain-Python references, hand-computed cases, streaming == one-shot, all_reduce."""

from __future__ import annotations

import math
import os
import statistics
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlkit import metrics
from mtlkit.errors import MtlkitError
from mtlkit.tasks import classification_task, depth_task, normal_task, segmentation_task

# ---------------------------------------------------------------- slow references (plain loops)


def ref_segmentation(pred_ids, target, num_classes, ignore=-1):
    """Confusion matrix, mean IoU over present classes and pixel accuracy, by explicit loops."""
    cm = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(np.asarray(pred_ids).ravel().tolist(), np.asarray(target).ravel().tolist()):
        if t != ignore:
            cm[t][p] += 1
    ious = []
    for c in range(num_classes):
        tp = cm[c][c]
        fn = sum(cm[c]) - tp
        fp = sum(cm[r][c] for r in range(num_classes)) - tp
        if tp + fn + fp > 0:
            ious.append(tp / (tp + fn + fp))
    total = sum(map(sum, cm))
    correct = sum(cm[c][c] for c in range(num_classes))
    return cm, sum(ious) / len(ious), correct / total


def ref_depth(pred, target):
    abs_sum = rel_sum = 0.0
    n = 0
    for p, t in zip(np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()):
        if t != 0:
            abs_sum += abs(p - t)
            rel_sum += abs(p - t) / t
            n += 1
    return abs_sum / n, rel_sum / n


def ref_normal_angles(pred, target):
    """Angle in degrees of every valid pixel of (N, 3, H, W) arrays, one pixel at a time."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    n, _, h, w = pred.shape
    angles = []
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = [float(target[i, c, y, x]) for c in range(3)]
                if t == [0.0, 0.0, 0.0]:
                    continue
                p = [float(pred[i, c, y, x]) for c in range(3)]
                norm = math.sqrt(sum(v * v for v in p))
                cos = sum(a / norm * b for a, b in zip(p, t))
                angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    return angles


def random_segmentation(rng, n=3, h=5, w=7, c=4, ignore_frac=0.2):
    target = rng.integers(0, c, size=(n, h, w))
    target[rng.random((n, h, w)) < ignore_frac] = -1
    logits = rng.normal(size=(n, c, h, w)).astype(np.float32)
    return logits, target


def random_normals(rng, n=2, h=4, w=5, missing_frac=0.25):
    pred = rng.normal(size=(n, 3, h, w)).astype(np.float32)
    target = rng.normal(size=(n, 3, h, w))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    target[np.repeat((rng.random((n, 1, h, w)) < missing_frac), 3, axis=1)] = 0
    return pred, target.astype(np.float32)


# ---------------------------------------------------------------- segmentation


def test_segmentation_matches_slow_reference_numpy_and_torch():
    rng = np.random.default_rng(0)
    logits, target = random_segmentation(rng)
    ids = logits.argmax(axis=1)
    cm_ref, miou_ref, acc_ref = ref_segmentation(ids, target, 4)
    for p, t in [(logits, target), (torch.from_numpy(logits), torch.from_numpy(target)), (ids, target)]:
        out = metrics.segmentation_metrics(p, t, 4)
        assert out["miou"] == pytest.approx(miou_ref, rel=1e-12)
        assert out["pix_acc"] == pytest.approx(acc_ref, rel=1e-12)
    cm = metrics.confusion_matrix(logits, target, 4, ignore_index=-1)
    assert cm.dtype == np.int64 and cm.tolist() == cm_ref


def test_segmentation_hand_confusion_matrix():
    target = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 1, 2, 0]])
    cm = metrics.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    np.testing.assert_allclose(metrics.per_class_iou(cm), [1 / 3, 2 / 3, 1 / 2])
    out = metrics.segmentation_metrics(pred, target, 3)
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pix_acc"] == pytest.approx(4 / 6)
    # FCN Sec. 5: class recalls 1/2, 2/2, 1/2; f.w. IU weights each IU by its 2 of the 6 true pixels
    assert out["macc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert out["fwiou"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 2 * 1 / 2) / 6)


def fcn_reference(pred, target, num_classes, ignore=-1):
    """Long et al. (FCN, CVPR 2015) Sec. 5's four metrics, written from the formulas with pixel and class
    loops; classes with an undefined term (t_i = 0 for the accuracy, a 0 union for the IU) are skipped."""
    n = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(np.asarray(pred).ravel().tolist(), np.asarray(target).ravel().tolist()):
        if t != ignore:
            n[t][p] += 1
    t_ = [sum(n[i]) for i in range(num_classes)]
    total = sum(t_)
    col = [sum(n[j][i] for j in range(num_classes)) for i in range(num_classes)]
    accs = [n[i][i] / t_[i] for i in range(num_classes) if t_[i] > 0]
    ius = [n[i][i] / (t_[i] + col[i] - n[i][i]) for i in range(num_classes) if t_[i] + col[i] - n[i][i] > 0]
    fw = sum(t_[i] * n[i][i] / (t_[i] + col[i] - n[i][i]) for i in range(num_classes) if t_[i] > 0)
    return {
        "pix_acc": sum(n[i][i] for i in range(num_classes)) / total,
        "macc": sum(accs) / len(accs),
        "miou": sum(ius) / len(ius),
        "fwiou": fw / total,
    }


@pytest.mark.parametrize("seed", range(6))
def test_segmentation_four_fcn_metrics_match_the_slow_reference(seed):
    """Random label maps with ignore pixels, classes absent from the target and classes only predicted."""
    rng = np.random.default_rng(100 + seed)
    c = 7
    target = rng.integers(0, c, size=(3, 6, 5))
    target[target == 5] = 4  # class 5 never in the target (some predictions may still say 5)
    target[rng.random(target.shape) < 0.25] = -1
    pred = np.where(rng.random(target.shape) < 0.5, target.clip(min=0), rng.integers(0, c, size=target.shape))
    pred[pred == 6] = 0  # class 6 neither predicted nor (usually) in the target
    target[target == 6] = 0
    out = metrics.segmentation_metrics(pred, target, c)
    ref = fcn_reference(pred, target, c)
    for key in ("pix_acc", "macc", "miou", "fwiou"):
        assert out[key] == pytest.approx(ref[key], rel=1e-12), key
    meter = metrics.SegmentationMeter(c)  # streaming over images equals the one-shot numbers
    for i in range(len(target)):
        meter.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    assert meter.compute() == pytest.approx(out, rel=1e-12)


def test_segmentation_class_absent_from_target_leaves_mean_accuracy_and_fwiou():
    """A class only predicted: out of macc (t_i = 0), weight 0 in fwiou, IoU 0 in miou."""
    target = np.array([[[0, 0], [1, 1]]])
    pred = np.array([[[0, 2], [1, 1]]])
    out = metrics.segmentation_metrics(pred, target, num_classes=6)
    assert out["macc"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["fwiou"] == pytest.approx((2 * 1 / 2 + 2 * 1) / 4)
    np.testing.assert_allclose(metrics.per_class_accuracy(metrics.confusion_matrix(pred, target, 6))[:2], [0.5, 1])
    assert np.isnan(metrics.per_class_accuracy(metrics.confusion_matrix(pred, target, 6))[2:]).all()


def test_segmentation_perfect_and_all_wrong():
    target = np.random.default_rng(1).integers(0, 5, size=(2, 4, 4))
    assert metrics.segmentation_metrics(target, target, 5) == {"miou": 1.0, "pix_acc": 1.0, "macc": 1.0, "fwiou": 1.0}
    wrong = metrics.segmentation_metrics((target + 1) % 5, target, 5)
    assert wrong == {"miou": 0.0, "pix_acc": 0.0, "macc": 0.0, "fwiou": 0.0}


def test_segmentation_ignored_pixels_and_ignore_only_images_are_excluded():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 3, size=(2, 3, 3))
    pred = target.copy()
    pred[0, 0, :] = (pred[0, 0, :] + 1) % 3
    only_first = metrics.segmentation_metrics(pred[:1], target[:1], 3)
    target_ignore = target.copy()
    target_ignore[1] = -1  # second image: nothing labelled
    pred_garbage = pred.copy()
    pred_garbage[1] = (pred_garbage[1] + 1) % 3
    assert metrics.segmentation_metrics(pred_garbage, target_ignore, 3) == only_first
    assert only_first["pix_acc"] == pytest.approx(6 / 9)
    # a custom ignore value inside the label range of the data type (255 in uint8 maps)
    t255 = np.where(target_ignore == -1, 255, target_ignore).astype(np.uint8)
    assert metrics.segmentation_metrics(pred_garbage, t255, 3, ignore_index=255) == only_first


def test_segmentation_class_absent_everywhere_is_left_out_of_the_mean():
    target = np.array([[[0, 0], [1, 1]]])
    pred = np.array([[[0, 1], [1, 1]]])
    out = metrics.segmentation_metrics(pred, target, num_classes=6)
    # class 0: 1/(2+1-1) = 1/2; class 1: 2/(2+3-2) = 2/3; classes 2..5 absent: not counted as 0
    assert out["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    iou = metrics.per_class_iou(metrics.confusion_matrix(pred, target, 6))
    assert np.isnan(iou[2:]).all()
    # a class predicted but never in the target counts, with IoU 0
    out2 = metrics.segmentation_metrics(np.array([[[0, 2], [1, 1]]]), target, num_classes=6)
    assert out2["miou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_segmentation_rejects_bad_labels_naming_the_value():
    target = np.array([[0, 1, 7, -1]])
    pred = np.array([[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="label 7"):
        metrics.segmentation_metrics(pred, target, 3)
    with pytest.raises(MtlkitError, match="label 255"):
        metrics.confusion_matrix(torch.tensor([[0, 1]]), torch.tensor([[0, 255]]), 3)
    with pytest.raises(ValueError, match="label -2"):
        metrics.segmentation_metrics(np.zeros((1, 2), np.int64), np.array([[0, -2]]), 3)
    with pytest.raises(ValueError, match="class id 5"):
        metrics.segmentation_metrics(np.array([[0, 5]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="non-integer"):
        metrics.segmentation_metrics(np.array([[0, 1]]), np.array([[0.0, 1.5]]), 3)
    with pytest.raises(ValueError, match="channels"):
        metrics.segmentation_metrics(np.zeros((1, 4, 2, 2)), np.zeros((1, 2, 2), np.int64), 3)
    with pytest.raises(ValueError, match="floats"):
        metrics.segmentation_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), np.int64), 3)
    # whole-number float labels (as stored by some datasets) are fine
    out = metrics.segmentation_metrics(np.array([[0, 1]]), np.array([[0.0, 1.0]]), 2)
    assert out == {"miou": 1.0, "pix_acc": 1.0, "macc": 1.0, "fwiou": 1.0}


def test_segmentation_empty_set_is_nan():
    out = metrics.segmentation_metrics(np.zeros((1, 2, 2), np.int64), -np.ones((1, 2, 2), np.int64), 3)
    assert all(math.isnan(out[k]) for k in ("miou", "pix_acc", "macc", "fwiou"))
    meter = metrics.SegmentationMeter(3)
    assert all(math.isnan(v) for v in meter.compute().values())


# ---------------------------------------------------------------- depth


def test_depth_matches_slow_reference():
    rng = np.random.default_rng(3)
    target = rng.uniform(0.5, 10, size=(3, 1, 4, 5)).astype(np.float32)
    target[rng.random(target.shape) < 0.3] = 0
    pred = rng.uniform(0.5, 10, size=target.shape).astype(np.float32)
    abs_ref, rel_ref = ref_depth(pred, target)
    for p, t in [(pred, target), (torch.from_numpy(pred), torch.from_numpy(target))]:
        out = metrics.depth_metrics(p, t)
        assert out["abs_err"] == pytest.approx(abs_ref, rel=1e-12)
        assert out["rel_err"] == pytest.approx(rel_ref, rel=1e-12)


def test_depth_hand_values_zeros_excluded_and_perfect():
    pred = np.array([1.0, 2.0, 3.0, 1e6])
    target = np.array([2.0, 0.0, 4.0, 0.0])
    # valid: (1 vs 2): err 1, rel 1/2; (3 vs 4): err 1, rel 1/4
    assert metrics.depth_metrics(pred, target) == {"abs_err": 1.0, "rel_err": 0.375}
    assert metrics.depth_metrics(target, target) == {"abs_err": 0.0, "rel_err": 0.0}
    empty = metrics.depth_metrics(pred, np.zeros(4))
    assert math.isnan(empty["abs_err"]) and math.isnan(empty["rel_err"])
    with pytest.raises(ValueError, match="shape"):
        metrics.depth_metrics(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2)))


# ---------------------------------------------------------------- normals


def test_normals_match_slow_reference():
    rng = np.random.default_rng(4)
    pred, target = random_normals(rng)
    angles = ref_normal_angles(pred, target)
    out = metrics.normal_metrics(torch.from_numpy(pred), torch.from_numpy(target))
    assert out == metrics.normal_metrics(pred, target)
    assert out["mean"] == pytest.approx(sum(angles) / len(angles), rel=1e-12)
    assert out["median"] == pytest.approx(statistics.median(angles), abs=1e-4)  # float32-stored angles
    for th in (11.25, 22.5, 30):
        assert out[f"within_{th:g}"] == pytest.approx(100 * sum(a < th for a in angles) / len(angles))
    got = metrics.angular_errors(pred, target).numpy()
    np.testing.assert_allclose(got, angles, rtol=1e-10, atol=1e-10)


def _normal_map(vectors):
    """(1, 3, 1, len) array holding the given xyz vectors along the width."""
    return np.asarray(vectors, dtype=np.float64).T[None, :, None, :]


def test_normals_known_angles_by_construction():
    target = _normal_map([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    # unnormalised predictions: 0 deg, 45 deg, 90 deg, 180 deg, and a pixel with no target
    pred = _normal_map([[3, 0, 0], [2, 2, 0], [0, 0, 5], [0, 0, -0.5], [1, 2, 3]])
    angles = metrics.angular_errors(pred, target).numpy()
    np.testing.assert_allclose(angles, [0, 45, 90, 180], atol=1e-6)
    out = metrics.normal_metrics(pred, target)
    assert out["mean"] == pytest.approx((0 + 45 + 90 + 180) / 4)
    assert out["median"] == pytest.approx((45 + 90) / 2, abs=1e-5)  # even count: middle pair
    assert out["within_11.25"] == out["within_22.5"] == out["within_30"] == 25.0
    perfect = metrics.normal_metrics(target[..., :4] * 7, target[..., :4])
    assert perfect == {
        "mean": 0.0,
        "median": 0.0,
        "within_11.25": 100.0,
        "within_22.5": 100.0,
        "within_30": 100.0,
    }
    empty = metrics.normal_metrics(pred, np.zeros_like(pred))
    assert set(empty) == set(metrics.normal.KEYS) and all(math.isnan(v) for v in empty.values())
    with pytest.raises(ValueError, match="dim 1"):
        metrics.normal_metrics(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)))


# ---------------------------------------------------------------- classification


def test_accuracy_reference_and_hand_values():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(17, 6))
    target = rng.integers(0, 6, size=17)
    ref = 100 * sum(int(np.argmax(row) == t) for row, t in zip(logits, target)) / 17
    assert metrics.accuracy(logits, target)["accuracy"] == pytest.approx(ref)
    assert metrics.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == {"accuracy": 50.0}
    with pytest.raises(ValueError, match="label 6"):
        metrics.accuracy(logits[:2], np.array([0, 6]))
    assert math.isnan(metrics.AccuracyMeter().compute()["accuracy"])


# ---------------------------------------------------------------- streaming meters


def _uneven_batches(n):
    return [slice(0, 1), slice(1, 4), slice(4, n)]


def test_meters_over_uneven_batches_equal_one_shot():
    rng = np.random.default_rng(6)
    n = 7
    logits, seg_t = random_segmentation(rng, n=n, h=6, w=5, c=5)
    depth_t = rng.uniform(0.1, 5, size=(n, 1, 6, 5))
    depth_t[rng.random(depth_t.shape) < 0.2] = 0
    depth_p = rng.uniform(0.1, 5, size=depth_t.shape)
    norm_p, norm_t = random_normals(rng, n=n, h=6, w=5)
    cls_p, cls_t = rng.normal(size=(n, 4)), rng.integers(0, 4, size=n)

    meters = {
        "seg": (
            metrics.SegmentationMeter(5),
            logits,
            seg_t,
            lambda p, t: metrics.segmentation_metrics(p, t, 5),
        ),
        "depth": (metrics.DepthMeter(), depth_p, depth_t, metrics.depth_metrics),
        "normal": (metrics.NormalMeter(), norm_p, norm_t, metrics.normal_metrics),
        "cls": (metrics.AccuracyMeter(), cls_p, cls_t, metrics.accuracy),
    }
    for name, (meter, p, t, fn) in meters.items():
        for sl in _uneven_batches(n):
            meter.update(torch.from_numpy(p[sl]), torch.from_numpy(t[sl]))
        meter.all_reduce()  # no process group: no-op
        streamed, whole = meter.compute(), fn(p, t)
        assert set(streamed) == set(whole), name
        for k in whole:
            assert streamed[k] == pytest.approx(whole[k], rel=1e-9, abs=0), (name, k)
        if name == "normal":
            # counts and the median are exact, not just close
            for k in ("median", "within_11.25", "within_22.5", "within_30"):
                assert streamed[k] == whole[k]
        meter.reset()
        assert all(math.isnan(v) for v in meter.compute().values()), name

    seg_meter = metrics.SegmentationMeter(5)
    for sl in _uneven_batches(n):
        seg_meter.update(torch.from_numpy(logits[sl]), torch.from_numpy(seg_t[sl]))
    np.testing.assert_array_equal(seg_meter.confusion_matrix, metrics.confusion_matrix(logits, seg_t, 5))
    assert seg_meter.compute() == metrics.segmentation_metrics(logits, seg_t, 5)


def test_whole_set_value_differs_from_mean_of_per_batch_values():
    # batch 1: one valid pixel with error 10; batch 2: nine valid pixels with error 0
    p1, t1 = np.array([[11.0, 0.0]]), np.array([[1.0, 0.0]])
    p2, t2 = np.ones((1, 9)), np.ones((1, 9))
    per_batch = [metrics.depth_metrics(p1, t1)["abs_err"], metrics.depth_metrics(p2, t2)["abs_err"]]
    assert np.mean(per_batch) == 5.0
    meter = metrics.DepthMeter()
    meter.update(torch.tensor(p1), torch.tensor(t1))
    meter.update(torch.tensor(p2), torch.tensor(t2))
    assert meter.compute()["abs_err"] == 1.0  # 10 / 10 valid pixels
    # segmentation: image 1 is all class 0 right, image 2 all class 1 wrong (predicted 0)
    seg = metrics.SegmentationMeter(2)
    seg.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    seg.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    # per-batch mIoU: 1.0 and 0.0 (class 1 IoU 0, class 0 IoU 0) -> 0.5; whole set: (4/8 + 0) / 2
    assert seg.compute()["miou"] == 0.25


def test_task_meters_return_the_task_metric_names():
    tasks = [segmentation_task(4), depth_task(), normal_task(), classification_task("cifar", 10)]
    for task in tasks:
        assert set(task.new_meter().compute()) == set(task.metrics) | set(task.spec.reported_metrics), task.kind


# ---------------------------------------------------------------- delta_m


def test_delta_m_hand_example_and_errors():
    hib = {"segmentation/miou": True, "depth/abs_err": False}
    base = {"segmentation/miou": 0.5, "depth/abs_err": 0.4}
    res = {"segmentation/miou": 0.55, "depth/abs_err": 0.42}  # +10 % and 5 % worse
    assert metrics.delta_m(res, base, hib) == pytest.approx(2.5)
    assert metrics.delta_m(base, base, hib) == 0.0
    with pytest.raises(ValueError, match="depth/abs_err"):
        metrics.delta_m(res, {"segmentation/miou": 0.5}, hib)
    with pytest.raises(ValueError, match="depth/abs_err"):
        metrics.delta_m(res, {**base, "depth/abs_err": 0.0}, hib)
    with pytest.raises(ValueError, match="depth/abs_err"):
        metrics.delta_m(res, base, {"segmentation/miou": True})
    dirs = metrics.metric_directions([segmentation_task(3), depth_task()])
    assert dirs == {
        "segmentation/miou": True,
        "segmentation/pix_acc": True,
        "depth/abs_err": False,
        "depth/rel_err": False,
    }


# ---------------------------------------------------------------- all_reduce over 2 gloo processes


def _dist_data():
    """A small 5-image set; rank 0 gets images 0-1 (one batch), rank 1 images 2-4 (two batches)."""
    rng = np.random.default_rng(7)
    logits, seg_t = random_segmentation(rng, n=5, h=4, w=4, c=3)
    depth_t = rng.uniform(0.1, 5, size=(5, 1, 4, 4))
    depth_t[rng.random(depth_t.shape) < 0.2] = 0
    depth_p = rng.uniform(0.1, 5, size=depth_t.shape)
    norm_p, norm_t = random_normals(rng, n=5, h=4, w=4)
    norm_t[2:4] = 0  # rank 1's first batch has no valid normal: variable-size gather with a 0
    cls_p, cls_t = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5)
    return {
        "seg": (logits, seg_t),
        "depth": (depth_p, depth_t),
        "normal": (norm_p, norm_t),
        "cls": (cls_p, cls_t),
    }


def _new_meters():
    return {
        "seg": metrics.SegmentationMeter(3),
        "depth": metrics.DepthMeter(),
        "normal": metrics.NormalMeter(),
        "cls": metrics.AccuracyMeter(),
    }


def _dist_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = _dist_data()
        meters = _new_meters()
        batches = [slice(0, 2)] if rank == 0 else [slice(2, 4), slice(4, 5)]
        for name, meter in meters.items():
            if name == "cls" and rank == 0:
                continue  # an empty meter on one rank
            p, t = data[name]
            for sl in batches:
                meter.update(torch.from_numpy(p[sl]), torch.from_numpy(t[sl]))
        result = {}
        for name, meter in meters.items():
            meter.all_reduce()
            meter.all_reduce()  # second call: no-op
            result[name] = meter.compute()
        result["confusion"] = meters["seg"].confusion_matrix
        try:
            meters["depth"].update(torch.ones(1), torch.ones(1))
            result["update_after_reduce_raised"] = False
        except RuntimeError:
            result["update_after_reduce_raised"] = True
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_two_gloo_processes_equals_single_process(tmp_path):
    start = time.perf_counter()
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    elapsed = time.perf_counter() - start
    data = _dist_data()
    expected = {
        "seg": metrics.segmentation_metrics(*data["seg"], 3),
        "depth": metrics.depth_metrics(*data["depth"]),
        "normal": metrics.normal_metrics(*data["normal"]),
        "cls": metrics.accuracy(data["cls"][0][2:], data["cls"][1][2:]),  # rank 0 scored no sample
    }
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        np.testing.assert_array_equal(got["confusion"], metrics.confusion_matrix(*data["seg"], 3))
        assert got["update_after_reduce_raised"]
        for name, exp in expected.items():
            assert set(got[name]) == set(exp)
            for k in exp:
                assert got[name][k] == pytest.approx(exp[k], rel=1e-9, abs=0), (rank, name, k)
        assert got["normal"]["median"] == expected["normal"]["median"]
        assert got["cls"] == expected["cls"]
    print(f"2-process gloo all_reduce test: {elapsed:.1f} s")
