"""`mtlkit data prepare nyuv2` on a tiny HDF5 file in the real MATLAB v7.3 structure."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from mtlkit.cli.main import main
from mtlkit.data.check import check_dataset
from mtlkit.data.prepare_nyuv2 import (
    DEFAULT_SMOOTHING,
    KINECT,
    backproject,
    kinect_intrinsics,
    load_meta,
    normals_from_depth,
    prepare_nyuv2,
    smallest_eigenvector,
)
from mtlkit.errors import ConfigError, DataError

IN_H, IN_W = 24, 32  # the tiny "release" (full 640x480 view at 1/20)
OUT_H, OUT_W = 12, 16


def plane_depth(h: int, w: int, normal: np.ndarray, offset: float) -> np.ndarray:
    """Depth of the plane n . P = offset seen through the Kinect intrinsics at h x w."""
    k = kinect_intrinsics(h, w)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    ray = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u, dtype=float)], -1)
    return offset / (ray @ normal)


def _names(n: int, stem: str) -> np.ndarray:
    """A MATLAB cell row of ``n`` strings as scipy reads it: a (1, n) object array of 1-element string arrays."""
    names = np.empty((1, n), dtype=object)
    for i in range(n):
        names[0, i] = np.array([f"{stem}{i}"])
    return names


def write_meta(folder: Path) -> Path:
    """Mapping files in the structure of the public ones (every variable they hold, with their dtypes and
    shapes; the loader reads mapClass and classMapping13): raw id r -> 40-class ((r-1) % 40)+1 -> 13."""
    folder.mkdir(parents=True, exist_ok=True)
    map_class = ((np.arange(894) % 40) + 1).astype(np.uint8)[None]
    scipy.io.savemat(
        folder / "classMapping40.mat",
        {
            "className": _names(40, "class40_"),
            "mapClass": map_class,
            "allClassName": _names(894, "raw"),
            "mapToNYUSuperClass": ((np.arange(40) % 4) + 1).astype(np.uint8)[None],
            "mapToNYUSuperClassMat": (np.arange(160).reshape(4, 40) % 4 == 0).astype(np.uint8),
        },
    )
    labels13 = ((np.arange(40) % 13) + 1).astype(np.uint8)[None]
    scipy.io.savemat(
        folder / "class13Mapping.mat", {"classMapping13": {"labels13": labels13, "classNames": _names(13, "class")}}
    )
    return folder


def write_splits(path: Path, train: list[int], test: list[int]) -> Path:
    """A splits.mat with 1-based trainNdxs/testNdxs column vectors, like the public one."""
    scipy.io.savemat(
        path, {"trainNdxs": np.array(train, np.uint16)[:, None], "testNdxs": np.array(test, np.uint16)[:, None]}
    )
    return path


def write_release(path: Path, n: int = 3, with_raw: bool = False) -> dict[str, np.ndarray]:
    """A tiny nyu_depth_v2_labeled.mat: HDF5 with a 512-byte user block, arrays stored transposed.

    ``with_raw``: also ``rawDepths``, the plane 1 % further (as measured) with a hole in rows 12..15.
    """
    images = np.zeros((n, IN_H, IN_W, 3), np.uint8)
    images[:, :, : IN_W // 2, 0] = 255  # left half red
    images[:, : IN_H // 2, :, 1] = 255  # top half green
    images[:, :, :, 2] = np.arange(n)[:, None, None] * 50
    depths = np.stack([plane_depth(IN_H, IN_W, np.array([0.0, -0.6, -0.8]), -2.0 - i) for i in range(n)])
    depths = depths.astype(np.float32)
    depths[:, :4, :4] = 0  # a missing corner
    labels = np.zeros((n, IN_H, IN_W), np.uint16)
    labels[:, : IN_H // 2, IN_W // 2 :] = 3
    labels[:, IN_H // 2 :, : IN_W // 2] = 11
    labels[:, IN_H // 2 :, IN_W // 2 :] = 894
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1))  # (N, 3, W, H)
        f.create_dataset("depths", data=depths.transpose(0, 2, 1))  # (N, W, H)
        f.create_dataset("labels", data=labels.transpose(0, 2, 1))
        if with_raw:
            raw = np.where(depths > 0, depths * 1.01, 0).astype(np.float32)  # the same plane, scaled
            raw[:, 12:16, 10:26] = 0  # the sensor saw nothing there; the filled depths invented it
            f.create_dataset("rawDepths", data=raw.transpose(0, 2, 1))
            return {"images": images, "depths": depths, "labels": labels, "rawDepths": raw}
    return {"images": images, "depths": depths, "labels": labels}


def test_intrinsics_scale_about_pixel_centres() -> None:
    full = kinect_intrinsics(480, 640)
    assert (full.fx, full.fy, full.cx, full.cy) == (KINECT["fx"], KINECT["fy"], KINECT["cx"], KINECT["cy"])
    half = kinect_intrinsics(240, 320)
    assert half.fx == pytest.approx(KINECT["fx"] / 2)
    assert half.cx == pytest.approx((KINECT["cx"] + 0.5) / 2 - 0.5)
    assert kinect_intrinsics(288, 384).fy == pytest.approx(KINECT["fy"] * 0.6)


def test_normals_of_a_plane_face_the_camera() -> None:
    n_true = np.array([0.3, -0.5, -0.8])
    n_true /= np.linalg.norm(n_true)
    depth = plane_depth(48, 64, n_true, -3.0).astype(np.float32)  # n . P = -3 < 0: faces the camera
    depth[10:14, 20:24] = 0
    normal = normals_from_depth(depth, kinect_intrinsics(48, 64), window=5)
    valid = np.abs(normal).sum(-1) != 0
    assert not valid[10:14, 20:24].any()
    assert valid.sum() > 0.9 * valid.size
    assert np.allclose(normal[valid], n_true, atol=2e-3)
    assert np.allclose(np.linalg.norm(normal[valid], axis=-1), 1, atol=1e-5)
    # oriented towards the camera: n . P < 0 at every valid pixel
    pts = backproject(depth, kinect_intrinsics(48, 64))
    assert ((normal * pts).sum(-1)[valid] < 0).all()
    with pytest.raises(ValueError):
        normals_from_depth(depth, kinect_intrinsics(48, 64), window=4)


def test_plane_fit_eigenvector_is_exact_also_when_poorly_determined() -> None:
    """Known eigenvectors: C = Q diag(l) Q^T; l_min / l_mid up to 0.999, where 6 power steps were not enough."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(3000, 3, 3)))[0]
    low = np.concatenate([rng.uniform(0, 0.1, 1000), rng.uniform(0.9, 0.999, 2000)])
    values = np.stack([low, np.ones(3000), rng.uniform(1, 5, 3000)], -1)  # l_min, l_mid, l_max
    cov = np.einsum("nij,nj,nkj->nik", q, values, q)
    vec, ok = smallest_eigenvector(cov)
    assert ok.all() and np.allclose(np.linalg.norm(vec, axis=-1), 1)
    assert np.abs((vec * q[..., :, 0]).sum(-1)).min() > 1 - 1e-9
    line = np.zeros((1, 3, 3))
    line[0, 0, 0] = 1.0  # collinear points: no plane
    assert not smallest_eigenvector(line)[1][0]


def kinect_plane(
    normal: np.ndarray, offset: float, rows: slice, cols: slice, noise: float, seed: int = 0
) -> tuple[np.ndarray, object]:
    """A crop of the full 640x480 view of the plane n . P = offset, depth through the Kinect's integer disparity.

    ``round(k / z + noise)`` with ``k = 1 / 2.85e-3``: depth steps of 2.85e-3 z^2 (66 mm at 4.9 m);
    the noise (disparity units) is white noise smoothed over 3 px. Returns depth and the crop's intrinsics.
    """
    from scipy import ndimage

    full = kinect_intrinsics(480, 640)
    k = type(full)(full.fx, full.fy, full.cx - cols.start, full.cy - rows.start)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    ray = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones((h, w))], -1)
    z = offset / (ray @ normal)
    n = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=z.shape), 3.0)
    kq = 1 / 2.85e-3
    return (kq / np.round(kq / z + noise * n / n.std())).astype(np.float32), k


def _median_angle(est: np.ndarray, true: np.ndarray, margin: int = 16) -> float:
    e = est[margin:-margin, margin:-margin].reshape(-1, 3)
    assert (np.abs(e).sum(-1) > 0).all()
    return float(np.median(np.degrees(np.arccos(np.clip(e @ true, -1, 1)))))


@pytest.mark.parametrize(
    ("name", "normal", "offset", "rows", "limit"),
    [
        # a wall 4.4 to 5 m away, turned 20 degrees: the case (66 mm steps)
        ("wall", np.array([np.sin(0.35), 0.0, -np.cos(0.35)]), -4.6, slice(160, 320), 11.0),
        # the floor 1.2 m below a camera pitched down 15 degrees, 1.9 to 3 m away
        ("floor", np.array([0.0, -np.cos(0.26), -np.sin(0.26)]), -1.2, slice(300, 460), 5.0),
    ],
)
def test_normals_on_kinect_quantised_planes(
    name: str, normal: np.ndarray, offset: float, rows: slice, limit: float
) -> None:
    """The default (bilateral + depth-adaptive window) within ``limit`` degrees (median), the 5-pixel fit not."""
    normal = normal / np.linalg.norm(normal)
    depth, k = kinect_plane(normal, offset, rows, slice(200, 440), noise=0.4)
    default = _median_angle(normals_from_depth(depth, k, "adaptive", smoothing=DEFAULT_SMOOTHING), normal)
    five = _median_angle(normals_from_depth(depth, k, 5), normal)
    assert default < limit < five
    assert default < 0.6 * five


def test_prepare_raw_depth_marks_what_the_sensor_missed(tmp_path: Path) -> None:
    src = write_release(tmp_path / "labeled.mat", with_raw=True)
    meta = write_meta(tmp_path / "meta")
    splits = write_splits(tmp_path / "splits.mat", [1], [2])
    kw = {"splits": splits, "height": IN_H, "width": IN_W, "progress": False}
    prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "raw", depth="raw", **kw)
    prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "filled", **kw)
    raw_depth = np.load(tmp_path / "raw/val/depth/0.npy")[..., 0]
    raw_normal = np.load(tmp_path / "raw/val/normal/0.npy")
    missing = src["rawDepths"][1] == 0
    assert missing.sum() == 16 + 64  # the corner and the hole
    assert (raw_depth[missing] == 0).all() and (raw_normal[missing] == 0).all()
    assert np.array_equal(raw_depth[~missing], src["rawDepths"][1][~missing])  # the measured values
    filled_depth = np.load(tmp_path / "filled/val/depth/0.npy")[..., 0]
    filled_normal = np.load(tmp_path / "filled/val/normal/0.npy")
    hole = np.zeros_like(missing)
    hole[12:16, 10:26] = True
    assert (filled_depth[hole] > 0).all() and (np.abs(filled_normal[hole]).sum(-1) > 0).all()
    assert np.array_equal(filled_depth, src["depths"][1])
    valid = np.abs(raw_normal).sum(-1) > 0
    assert valid.sum() > 0.5 * valid.size and np.allclose(raw_normal[valid], [0, -0.6, -0.8], atol=1e-3)


def test_meta_from_public_structure(tmp_path: Path) -> None:
    meta = load_meta([write_meta(tmp_path / "meta")], write_splits(tmp_path / "s.mat", [1, 3], [2]))
    assert meta.map894[0] == -1  # unlabeled
    # raw 3 -> 40-class 3 -> 13-class 3 -> stored 2 ; raw 894 -> 40-class 14 -> 13-class 1 -> 0
    assert meta.map894[3] == 2 and meta.map894[894] == 0 and meta.map894[11] == 10
    assert meta.splits["train"].tolist() == [0, 2] and meta.splits["val"].tolist() == [1]
    assert meta.class_names[4] == "class4"


def test_meta_folder_with_the_public_split_sizes(tmp_path: Path) -> None:
    """A folder holding all three files, as the public release ships them: 1449 images split 795 / 654
    (1-based, shuffled), read by passing the folder alone."""
    order = np.random.default_rng(0).permutation(np.arange(1, 1450))
    folder = write_meta(tmp_path / "meta")
    write_splits(folder / "splits.mat", order[:795].tolist(), order[795:].tolist())
    meta = load_meta([folder])
    assert len(meta.splits["train"]) == 795 and len(meta.splits["val"]) == 654
    assert meta.splits["train"].tolist() == (order[:795] - 1).tolist()
    assert sorted(meta.splits["train"].tolist() + meta.splits["val"].tolist()) == list(range(1449))
    assert meta.class_names == [f"class{i}" for i in range(13)]
    assert set(np.unique(meta.map894[1:])) == set(range(13))  # every raw class lands in one of the 13
    for raw in (1, 40, 41, 894):  # raw -> ((raw - 1) % 40) + 1 -> ((c - 1) % 13) + 1, stored 0-based
        assert meta.map894[raw] == ((raw - 1) % 40) % 13


def test_prepare_converts_release(tmp_path: Path) -> None:
    src = write_release(tmp_path / "labeled.mat")
    meta = write_meta(tmp_path / "meta")
    splits = write_splits(tmp_path / "splits.mat", [1, 3], [2])
    out = tmp_path / "nyu"
    counts = prepare_nyuv2(
        tmp_path / "labeled.mat", [meta], out, splits=splits, height=OUT_H, width=OUT_W, progress=False
    )
    assert counts == {"train": 2, "val": 1}
    img = np.load(out / "train/image/1.npy")  # release image 3 (index 2)
    assert img.shape == (OUT_H, OUT_W, 3) and img.dtype == np.float32
    assert np.allclose(img[:, : OUT_W // 2 - 1, 0], 1) and np.allclose(img[:, OUT_W // 2 + 1 :, 0], 0)
    assert np.allclose(img[: OUT_H // 2 - 1, :, 1], 1) and np.allclose(img[OUT_H // 2 + 1 :, :, 1], 0)
    assert np.allclose(img[..., 2], 100 / 255)
    lab = np.load(out / "val/label/0.npy")
    h2, w2 = OUT_H // 2, OUT_W // 2
    assert (lab[:h2, :w2] == -1).all() and (lab[:h2, w2:] == 2).all()
    assert (lab[h2:, :w2] == 10).all() and (lab[h2:, w2:] == 0).all()
    depth = np.load(out / "val/depth/0.npy")
    assert depth.shape == (OUT_H, OUT_W, 1)
    assert np.allclose(depth[..., 0], src["depths"][1][1::2, 1::2])  # nearest = every other pixel
    assert (depth[:2, :2] == 0).all()
    normal = np.load(out / "val/normal/0.npy")
    assert (normal[:2, :2] == 0).all()
    valid = np.abs(normal).sum(-1) != 0
    assert valid.sum() > 0.6 * valid.size
    assert np.allclose(normal[valid], [0, -0.6, -0.8], atol=1e-3)
    report = check_dataset("nyuv2", out)
    assert report.ok, report.problems
    with pytest.raises(DataError, match="not empty"):
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], out, splits=splits, height=OUT_H, width=OUT_W, progress=False)


def test_prepare_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_release(tmp_path / "labeled.mat", n=2)
    meta = write_meta(tmp_path / "meta")
    direct = tmp_path / "map.npy"
    np.save(direct, (np.arange(894) % 14) - 1)  # raw r -> ((r - 1) % 14) - 1
    write_splits(meta / "splits.mat", [2], [1])
    out = tmp_path / "out"
    args = [
        "data",
        "prepare",
        "nyuv2",
        "--labeled-mat",
        str(tmp_path / "labeled.mat"),
        "--class-map",
        str(direct),
        str(meta / "splits.mat"),
        "--out",
        str(out),
        "--height",
        "12",
        "--width",
        "16",
        "--quiet",
    ]
    assert main(args) == 0
    assert "train 1, val 1" in capsys.readouterr().out
    lab = np.load(out / "train/label/0.npy")
    # unlabeled -> -1, raw 3 -> 2 - 1 = 1, raw 11 -> 10 - 1 = 9, raw 894 -> (893 % 14) - 1 = 10
    assert sorted(np.unique(lab).tolist()) == [-1, 1, 9, 10]
    assert main([*args, "--overwrite"]) == 0

    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, not hdf5")
    bad = [
        "data",
        "prepare",
        "nyuv2",
        "--labeled-mat",
        str(tmp_path / "bad.mat"),
        "--class-map",
        str(meta),
        "--out",
        str(tmp_path / "o2"),
        "--quiet",
    ]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.mat" in err and "HDF5" in err
    with h5py.File(tmp_path / "nolabels.mat", "w") as f:
        f.create_dataset("images", data=np.zeros((1, 3, 4, 4), np.uint8))
    with pytest.raises(DataError, match="'depths' not found"):
        prepare_nyuv2(tmp_path / "nolabels.mat", [meta], tmp_path / "o3", progress=False)
    big = write_splits(tmp_path / "big.mat", [1], [3])
    with pytest.raises(DataError, match="val indices reach 3 but .* holds 2 images"):
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "o4", splits=big, progress=False)
    with pytest.raises(DataError, match="class-map"):
        prepare_nyuv2(tmp_path / "labeled.mat", [tmp_path / "nothing"], tmp_path / "o5", progress=False)
    with pytest.raises(ConfigError, match="--normal-window"):
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "o6", window=4, progress=False)
    with pytest.raises(ConfigError, match="--normal-smoothing"):
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "o6", smoothing=4, progress=False)
    with pytest.raises(ConfigError, match="--depth: expected one of filled, raw"):
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "o6", depth="sensor", progress=False)
    with pytest.raises(DataError, match="'rawDepths' not found"):  # an older file without rawDepths
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], tmp_path / "o7", depth="raw", progress=False)
