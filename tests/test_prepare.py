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
    KINECT,
    _smallest_eigenvector,
    backproject,
    kinect_intrinsics,
    load_meta,
    normals_from_depth,
    prepare_nyuv2,
)
from mtlkit.errors import ConfigError, DataError

REAL_META = Path("/work/shared/data/nyuv2-meta")
IN_H, IN_W = 24, 32  # the tiny "release" (full 640x480 view at 1/20)
OUT_H, OUT_W = 12, 16


def plane_depth(h: int, w: int, normal: np.ndarray, offset: float) -> np.ndarray:
    """Depth of the plane n . P = offset seen through the Kinect intrinsics at h x w."""
    k = kinect_intrinsics(h, w)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    ray = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u, dtype=float)], -1)
    return offset / (ray @ normal)


def write_meta(folder: Path) -> Path:
    """Mapping files in the structure of the public ones: raw id r -> 40-class ((r-1) % 40)+1 -> 13."""
    folder.mkdir(parents=True, exist_ok=True)
    map_class = ((np.arange(894) % 40) + 1).astype(np.uint8)[None]
    scipy.io.savemat(folder / "classMapping40.mat", {"mapClass": map_class})
    labels13 = ((np.arange(40) % 13) + 1).astype(np.uint8)[None]
    names = np.empty((1, 13), dtype=object)
    for i in range(13):
        names[0, i] = np.array([f"class{i}"])
    scipy.io.savemat(folder / "class13Mapping.mat", {"classMapping13": {"labels13": labels13, "classNames": names}})
    return folder


def write_splits(path: Path, train: list[int], test: list[int]) -> Path:
    """A splits.mat with 1-based trainNdxs/testNdxs column vectors, like the public one."""
    scipy.io.savemat(path, {"trainNdxs": np.array(train, np.uint16)[:, None],
                            "testNdxs": np.array(test, np.uint16)[:, None]})
    return path


def write_release(path: Path, n: int = 3) -> dict[str, np.ndarray]:
    """A tiny nyu_depth_v2_labeled.mat: HDF5 with a 512-byte user block, arrays stored transposed."""
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


def test_plane_fit_eigenvector_matches_eigh() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 25, 3)) * [1.0, 0.7, 0.1]  # noisy planar patches
    rot = np.linalg.qr(rng.normal(size=(2000, 3, 3)))[0]
    pts = np.einsum("nij,nkj->nki", rot, pts)
    centred = pts - pts.mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred) / 25
    vec, ok = _smallest_eigenvector(cov)
    ref = np.linalg.eigh(cov)[1][..., :, 0]
    assert ok.all() and np.allclose(np.linalg.norm(vec, axis=-1), 1)
    assert np.abs((vec * ref).sum(-1)).min() > 1 - 1e-6
    line = np.zeros((1, 3, 3))
    line[0, 0, 0] = 1.0  # collinear points: no plane
    assert not _smallest_eigenvector(line)[1][0]


def test_meta_from_public_structure(tmp_path: Path) -> None:
    meta = load_meta([write_meta(tmp_path / "meta")], write_splits(tmp_path / "s.mat", [1, 3], [2]))
    assert meta.map894[0] == -1  # unlabeled
    # raw 3 -> 40-class 3 -> 13-class 3 -> stored 2 ; raw 894 -> 40-class 14 -> 13-class 1 -> 0
    assert meta.map894[3] == 2 and meta.map894[894] == 0 and meta.map894[11] == 10
    assert meta.splits["train"].tolist() == [0, 2] and meta.splits["val"].tolist() == [1]
    assert meta.class_names[4] == "class4"


@pytest.mark.skipif(not REAL_META.is_dir(), reason="public NYUv2 mapping files not present")
def test_meta_from_real_public_files() -> None:
    meta = load_meta([REAL_META])
    assert len(meta.splits["train"]) == 795 and len(meta.splits["val"]) == 654
    names = meta.class_names
    assert len(names) == 13
    assert names[meta.map894[3]] == "furniture"  # raw 3 is "cabinet"
    assert names[meta.map894[11]] == "floor"  # raw 11 is "floor" in the 40-class scheme
    assert set(np.unique(meta.map894[1:])) == set(range(13))


def test_prepare_converts_release(tmp_path: Path) -> None:
    src = write_release(tmp_path / "labeled.mat")
    meta = write_meta(tmp_path / "meta")
    splits = write_splits(tmp_path / "splits.mat", [1, 3], [2])
    out = tmp_path / "nyu"
    counts = prepare_nyuv2(tmp_path / "labeled.mat", [meta], out, splits=splits, height=OUT_H, width=OUT_W,
                           progress=False)
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
        prepare_nyuv2(tmp_path / "labeled.mat", [meta], out, splits=splits, height=OUT_H, width=OUT_W,
                      progress=False)


def test_prepare_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_release(tmp_path / "labeled.mat", n=2)
    meta = write_meta(tmp_path / "meta")
    direct = tmp_path / "map.npy"
    np.save(direct, (np.arange(894) % 14) - 1)  # raw r -> ((r - 1) % 14) - 1
    write_splits(meta / "splits.mat", [2], [1])
    out = tmp_path / "out"
    args = ["data", "prepare", "nyuv2", "--labeled-mat", str(tmp_path / "labeled.mat"), "--class-map",
            str(direct), str(meta / "splits.mat"), "--out", str(out), "--height", "12", "--width", "16", "--quiet"]
    assert main(args) == 0
    assert "train 1, val 1" in capsys.readouterr().out
    lab = np.load(out / "train/label/0.npy")
    # unlabeled -> -1, raw 3 -> 2 - 1 = 1, raw 11 -> 10 - 1 = 9, raw 894 -> (893 % 14) - 1 = 10
    assert sorted(np.unique(lab).tolist()) == [-1, 1, 9, 10]
    assert main([*args, "--overwrite"]) == 0

    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, not hdf5")
    bad = ["data", "prepare", "nyuv2", "--labeled-mat", str(tmp_path / "bad.mat"), "--class-map", str(meta),
           "--out", str(tmp_path / "o2"), "--quiet"]
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
