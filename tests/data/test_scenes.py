"""Tests of the procedural scene generator: geometry, determinism, class schemes and the cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mtlkit.data import scenes
from mtlkit.errors import ConfigError, DataError

H, W = 48, 64


def _rays(intr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame ray (u - cx) / fx, (v - cy) / fy, 1 of every pixel: (H, W, 3)."""
    fx, fy, cx, cy = intr
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)


def test_class_schemes_are_merges():
    assert {n: len(v) for n, v in scenes.CLASS_NAMES.items()} == {2: 2, 7: 7, 13: 13}
    for n, m in scenes._MERGE.items():
        assert m.shape == (13,) and set(m.tolist()) == set(range(n))  # every coarse class used
    # the 2-class scheme is a merge of the 7-class one
    seven_to_two = {}
    for fine in range(13):
        seven_to_two.setdefault(int(scenes._MERGE[7][fine]), set()).add(int(scenes._MERGE[2][fine]))
    assert all(len(v) == 1 for v in seven_to_two.values())
    assert scenes.CLASS_NAMES[7][scenes._MERGE[7][scenes.CLASS_NAMES[13].index("window")]] == "wall"

    outs = {n: scenes.render_scene(3, H, W, n) for n in (2, 7, 13)}
    fine = outs[13]["label"].astype(np.int64)
    for n in (2, 7):
        for key in ("image", "depth", "normal", "intrinsics"):
            assert np.array_equal(outs[n][key], outs[13][key])
        assert np.array_equal(outs[n]["label"], scenes._MERGE[n][fine].astype(np.float32))


@pytest.mark.parametrize("num_classes", [2, 7, 13])
def test_shapes_dtypes_ranges(num_classes):
    out = scenes.render_scene(11, H, W, num_classes)
    assert out["image"].shape == (H, W, 3) and out["image"].dtype == np.float32
    assert out["label"].shape == (H, W) and out["label"].dtype == np.float32
    assert out["depth"].shape == (H, W, 1) and out["depth"].dtype == np.float32
    assert out["normal"].shape == (H, W, 3) and out["normal"].dtype == np.float32
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["image"].std() > 0.05  # not a blank picture
    lab = out["label"]
    assert np.array_equal(lab, np.round(lab)) and lab.min() >= 0 and lab.max() <= num_classes - 1
    assert np.isfinite(out["depth"]).all() and out["depth"].min() > 0.05 and out["depth"].max() < 15
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=-1), 1.0, atol=1e-5)
    fx = W / (2 * np.tan(np.radians(31.0)))
    np.testing.assert_allclose(out["intrinsics"], [fx, fx, (W - 1) / 2, (H - 1) / 2])


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        scenes.render_scene(0, H, W, 5)
    with pytest.raises(ConfigError, match="too small"):
        scenes.render_scene(0, 4, W, 13)


def test_deterministic_per_seed():
    a, b, c = (scenes.render_scene(s, H, W, 13) for s in (7, 7, 8))
    for key in a:
        assert a[key].tobytes() == b[key].tobytes()
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["depth"], c["depth"])


def _hand_scene() -> scenes._Scene:
    """A 4 x 3 x 5 m room, camera at (2, 1.5, 1) looking along +z, one ball and one cabinet."""
    s = scenes._Scene(room=np.array([4.0, 3.0, 5.0]))
    rng = np.random.default_rng(0)
    for cls in (scenes.FLOOR, scenes.WALL, scenes.CEILING, scenes.OBJECT, scenes.CABINET):
        s.materials.append(scenes._material(rng, cls))
    s.spheres.append((np.array([2.0, 1.5, 3.5]), 0.5, 3))
    s.boxes.append((np.array([1.6, 0.9, 2.5]), np.array([0.3, 0.4, 0.3]), 0.0, 4))
    s.cam_pos, s.cam_rot = np.array([2.0, 1.5, 1.0]), scenes._camera_rotation(0.0, 0.0, 0.0)
    s.light = np.array([2.0, 2.8, 2.0])
    return s


def test_hand_computed_scene():
    h, w = 31, 41  # odd sizes: the centre pixel looks exactly along the optical axis
    out = scenes._trace(_hand_scene(), np.random.default_rng(1), h, w)
    fx, fy, cx, cy = out["intrinsics"]
    assert (cx, cy) == (20.0, 15.0)
    depth, normal, label = out["depth"][..., 0], out["normal"], out["label"]
    # ball: front pole 0.5 m before its centre 2.5 m ahead, normal straight back at the camera
    assert depth[15, 20] == pytest.approx(2.0, abs=1e-5)
    np.testing.assert_allclose(normal[15, 20], [0, 0, -1], atol=1e-5)
    assert label[15, 20] == scenes.OBJECT
    # far wall 4 m ahead: z-depth is 4 for every pixel on it, whatever the ray's angle
    for v, u in ((7, 28), (5, 5), (10, 35)):
        assert label[v, u] == scenes.WALL and depth[v, u] == pytest.approx(4.0, abs=1e-5)
        np.testing.assert_allclose(normal[v, u], [0, 0, -1], atol=1e-6)
    # floor 1.5 m below the camera: z = 1.5 / ((v - cy) / fy); normal is world up = camera -y
    assert label[30, 20] == scenes.FLOOR
    assert depth[30, 20] == pytest.approx(1.5 * fy / (30 - cy), rel=1e-5)
    np.testing.assert_allclose(normal[30, 20], [0, -1, 0], atol=1e-6)
    # cabinet front face at z = 2.2, 1.2 m ahead (world x = 1.6 is to the camera's right: +x)
    assert label[29, 31] == scenes.CABINET and depth[29, 31] == pytest.approx(1.2, abs=1e-5)
    np.testing.assert_allclose(normal[29, 31], [0, 0, -1], atol=1e-6)
    # ceiling 1.5 m above: normal is world down = camera +y
    assert label[0, 20] == scenes.CEILING
    assert depth[0, 20] == pytest.approx(1.5 * fy / cy, rel=1e-5)
    np.testing.assert_allclose(normal[0, 20], [0, 1, 0], atol=1e-6)


def test_culling_matches_brute_force():
    rng = np.random.default_rng(0)
    scene = scenes._sample_scene(rng)
    prims = scenes._pack(scene)
    n = len(prims["kind"])
    k = scenes._intrinsics(H, W)
    rays = _rays(k, H, W).reshape(-1, 3).T
    d = scenes._mat3(scene.cam_rot, rays).astype(np.float32)
    o = scene.cam_pos.astype(np.float32)
    everything = (np.repeat(np.arange(n), d.shape[1]), np.tile(np.arange(d.shape[1]), n))
    t_all, i_all = scenes._nearest(o, d, prims, everything)
    assert np.isfinite(t_all).any()
    for pairs in (None, scenes._screen_pairs(prims, o, scene.cam_rot, k, H, W, d)):
        t, i = scenes._nearest(o, d, prims, pairs)
        assert np.array_equal(t, t_all) and np.array_equal(i, i_all)
    light = scene.light.astype(np.float32)  # shadow rays: rays from the light to random points
    to = rng.uniform([0, 0, 0], scene.room, size=(500, 3)).T.astype(np.float32) - light[:, None]
    t_all, i_all = scenes._nearest(light, to, prims, (np.repeat(np.arange(n), 500), np.tile(np.arange(500), n)))
    t, i = scenes._nearest(light, to, prims)
    assert np.array_equal(t, t_all) and np.array_equal(i, i_all)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_depth_agrees_with_normals_on_planes(seed):
    h, w = 72, 96
    out = scenes._render(seed, h, w)
    pts = _rays(out["intrinsics"], h, w) * out["depth"].astype(np.float64)  # back-projected (H, W, 3)
    du = pts[:-1, 1:] - pts[:-1, :-1]
    dv = pts[1:, :-1] - pts[:-1, :-1]
    fd = np.cross(dv, du)
    fd /= np.linalg.norm(fd, axis=-1, keepdims=True)
    surf = out["surface"]
    same = (surf[:-1, :-1] == surf[:-1, 1:]) & (surf[:-1, :-1] == surf[1:, :-1]) & (surf[:-1, :-1] % 8 != 7)
    assert same.mean() > 0.7
    cos = (fd * out["normal"][:-1, :-1]).sum(-1)[same]
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert angle.max() < 2.0, angle.max()
    # the floor is one plane: every floor normal is the same vector
    floor = out["normal"][out["label"] == scenes.FLOOR]
    if len(floor):
        np.testing.assert_allclose(floor, np.broadcast_to(floor[:1], floor.shape), atol=1e-5)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_normals_face_the_camera(seed):
    out = scenes.render_scene(seed, 72, 96, 13)
    dots = (_rays(out["intrinsics"], 72, 96) * out["normal"]).sum(-1)
    assert (dots < 0).all()


def test_class_statistics_over_many_scenes():
    counts = np.zeros(13)
    for i in range(40):
        counts += np.bincount(scenes.render_scene(100 + i, 24, 32, 13)["label"].astype(int).ravel(), minlength=13)
    assert (counts > 0).all()  # every class shows up
    assert counts[scenes.WALL] / counts.sum() < 0.7  # walls do not swamp the picture


def _load(root, split, kind, i):
    return np.load(root / split / kind / f"{i}.npy")


def test_generate_layout_meta_and_independence(tmp_path):
    a = scenes.generate(tmp_path / "a", 2, 1, 24, 32, 7, seed=5, progress=False)
    b = scenes.generate(tmp_path / "b", 4, 2, 24, 32, 7, seed=5, progress=False)
    c = scenes.generate(tmp_path / "c", 2, 1, 24, 32, 7, seed=6, progress=False)
    assert a == tmp_path / "a"
    meta = json.loads((a / "meta.json").read_text())
    assert meta["version"] == scenes.VERSION and meta["seed"] == 5 and meta["num_classes"] == 7
    assert meta["counts"] == {"train": 2, "val": 1} and meta["class_names"] == scenes.CLASS_NAMES[7]
    assert (meta["height"], meta["width"]) == (24, 32) and "z-depth" in meta["depth"]
    for split, n in (("train", 2), ("val", 1)):
        for kind in scenes._KINDS:
            assert sorted(os.listdir(a / split / kind)) == [f"{i}.npy" for i in range(n)]
            for i in range(n):  # sample i does not depend on how many samples were made
                assert (a / split / kind / f"{i}.npy").read_bytes() == (b / split / kind / f"{i}.npy").read_bytes()
    ref = scenes.render_scene(scenes.sample_seed(5, "val", 0), 24, 32, 7)
    for kind in scenes._KINDS:
        assert np.array_equal(_load(a, "val", kind, 0), ref[kind])
    assert not np.array_equal(_load(a, "train", "image", 0), _load(a, "val", "image", 0))
    assert not np.array_equal(_load(a, "train", "image", 0), _load(c, "train", "image", 0))
    assert _load(a, "train", "depth", 1).shape == (24, 32, 1)


def test_ensure_generated_reuses_and_regenerates(tmp_path, monkeypatch):
    args = dict(n_train=2, n_val=1, height=24, width=32, num_classes=2, seed=3, progress=False)
    root = scenes.ensure_generated(tmp_path, **args)
    assert root == tmp_path / f"scenes-2c-24x32-2-1-s3-v{scenes.VERSION}"
    assert root.name == scenes.cache_name(2, 1, 24, 32, 2, 3)
    image = (root / "train/image/1.npy").read_bytes()

    real = scenes.generate
    calls = []

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(scenes, "generate", counting)
    assert scenes.ensure_generated(tmp_path, **args) == root
    assert calls == []  # complete and matching: reused

    meta = json.loads((root / "meta.json").read_text())
    meta["version"] = -1
    (root / "meta.json").write_text(json.dumps(meta))
    scenes.ensure_generated(tmp_path, **args)
    assert len(calls) == 1 and json.loads((root / "meta.json").read_text())["version"] == scenes.VERSION

    (root / "val/normal/0.npy").unlink()  # an incomplete cache
    scenes.ensure_generated(tmp_path, **args)
    assert len(calls) == 2 and (root / "val/normal/0.npy").exists()
    assert (root / "train/image/1.npy").read_bytes() == image

    (root / "meta.json").unlink()
    scenes.ensure_generated(tmp_path, **args)
    assert len(calls) == 3

    other = scenes.ensure_generated(tmp_path, **{**args, "seed": 4})
    assert other != root and len(calls) == 4


def test_killed_generation_leaves_no_cache(tmp_path, monkeypatch):
    args = dict(n_train=3, n_val=1, height=16, width=16, num_classes=13, seed=0, progress=False)
    real = scenes._render
    made = []

    def dying(*a):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(a)
        return real(*a)

    monkeypatch.setattr(scenes, "_render", dying)
    with pytest.raises(KeyboardInterrupt):
        scenes.ensure_generated(tmp_path, **args)
    assert os.listdir(tmp_path) == []  # neither a cache nor a partial folder
    monkeypatch.setattr(scenes, "_render", real)

    # a hard kill (SIGKILL) leaves a partial folder: it is never taken for the cache, and cleaned
    name = scenes.cache_name(3, 1, 16, 16, 13, 0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{name}.partial-{socket.gethostname()}-{int(dead.stdout)}-0123abcd"
    (stale / "train" / "image").mkdir(parents=True)
    np.save(stale / "train" / "image" / "0.npy", np.zeros(3))
    root = scenes.ensure_generated(tmp_path, **args)
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == [name]
    assert len(os.listdir(root / "train" / "label")) == 3


def test_generate_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a scenes cache"):
        scenes.generate(tmp_path / "mine", 1, 1, 16, 16, 2, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError):
        scenes.generate(tmp_path / "x", -1, 1, 16, 16, 2, progress=False)


def test_class_names_option_names_the_segmentation_classes() -> None:
    """``dataset.options.class_names: true`` gives the segmentation task the scene classes' names (per-class IoU)."""
    from mtlkit.config import DatasetConfig
    from mtlkit.data.scenes.classes import CLASS_NAMES
    from mtlkit.data.scenes_dataset import ScenesBuilder
    from mtlkit.errors import ConfigError

    named = ScenesBuilder(DatasetConfig(name="scenes", num_classes=7, options={"class_names": True})).all_tasks()[0]
    assert named.option("class_names") == CLASS_NAMES[7]
    assert ScenesBuilder(DatasetConfig(name="scenes", num_classes=7)).all_tasks()[0].option("class_names") is None
    with pytest.raises(ConfigError, match="dataset.options.class_names: true or false"):
        ScenesBuilder(DatasetConfig(name="scenes", options={"class_names": "yes"}))
