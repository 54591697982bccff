"""Loaders of the .npy layouts (NYUv2, CityScapes, scenes), their per-file checks and augmentation."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlkit.cli.main import main
from mtlkit.config import DatasetConfig
from mtlkit.data.augment import DenseAugment
from mtlkit.data.check import check_dataset
from mtlkit.data.cityscapes import MAP_7_TO_2
from mtlkit.data.npy import NpyDenseDataset, save_sample
from mtlkit.errors import ConfigError, DataError
from mtlkit.registry import DATASETS
from mtlkit.tasks import depth_task, normal_task, segmentation_task

H, W = 8, 12


def _normals(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    n = rng.normal(size=(h, w, 3))
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    n[0, :3] = 0  # missing
    return n.astype(np.float32)


def make_nyuv2(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A tiny NYUv2-layout folder (float labels with -1, depth with zeros, unit normals)."""
    rng = np.random.default_rng(seed)
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for i in range(n):
            depth = rng.uniform(0.5, 10, (H, W, 1)).astype(np.float32)
            depth[1, :4] = 0
            save_sample(
                root,
                split,
                i,
                {
                    "image": rng.random((H, W, 3)).astype(np.float32),
                    "label": rng.integers(-1, 13, (H, W)).astype(np.float32),
                    "depth": depth,
                    "normal": _normals(rng),
                },
            )
    return root


def make_cityscapes(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A tiny CityScapes-layout folder (label_7, label_19, disparity depth)."""
    rng = np.random.default_rng(seed)
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for i in range(n):
            save_sample(
                root,
                split,
                i,
                {
                    "image": rng.random((H, W, 3)).astype(np.float32),
                    "label_7": rng.integers(-1, 7, (H, W)).astype(np.float32),
                    "label_19": rng.integers(-1, 19, (H, W)).astype(np.int64),
                    "depth": rng.uniform(0, 0.3, (H, W, 1)).astype(np.float32),
                },
            )
    return root


def _builder(name: str, **kw):
    return DATASETS.get(name)(DatasetConfig(name=name, **kw))


def test_nyuv2_samples_match_files(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path)
    builder = _builder("nyuv2", root=str(root))
    assert [t.name for t in builder.tasks()] == ["segmentation", "depth", "normal"]
    assert builder.tasks()[0].channels == 13
    train, val = builder.dataset("train", True), builder.dataset("val", False)
    assert (len(train), len(val)) == (3, 2)
    s = val[1]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, H, W)
    assert s["segmentation"].dtype == torch.int64 and s["segmentation"].shape == (H, W)
    assert s["depth"].shape == (1, H, W) and s["normal"].shape == (3, H, W)
    img = np.load(root / "val/image/1.npy")
    lab = np.load(root / "val/label/1.npy")
    assert torch.equal(s["image"], torch.from_numpy(img).permute(2, 0, 1))
    assert torch.equal(s["segmentation"], torch.from_numpy(lab.astype(np.int64)))
    assert (s["segmentation"] == -1).any()
    assert torch.equal(s["depth"][0], torch.from_numpy(np.load(root / "val/depth/1.npy")[..., 0]))
    batch = next(iter(DataLoader(train, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["segmentation"].shape == (2, H, W)


def test_nyuv2_config_errors(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    with pytest.raises(ConfigError, match="dataset.root"):
        _builder("nyuv2").dataset("train", False)
    with pytest.raises(DataError, match="nowhere"):
        _builder("nyuv2", root=str(tmp_path / "nowhere")).dataset("train", False)
    with pytest.raises(DataError, match="dataset.height is 288"):
        _builder("nyuv2", root=str(root), height=288).dataset("train", False)
    with pytest.raises(ConfigError, match="dataset.options.bogus"):
        _builder("nyuv2", root=str(root), options={"bogus": 1})
    with pytest.raises(ConfigError, match="num_classes"):
        _builder("nyuv2", num_classes=7)
    with pytest.raises(ConfigError, match="split 'test'"):
        _builder("nyuv2", root=str(root)).dataset("test", False)
    with pytest.raises(ConfigError, match="not provided"):
        _builder("nyuv2", tasks=["edges"]).tasks()
    capped = _builder("nyuv2", root=str(root), n_train=2, n_val=1, height=H, width=W, tasks=["depth"])
    assert len(capped.dataset("train", False)) == 2 and len(capped.dataset("val", False)) == 1
    assert set(capped.dataset("val", False)[0]) == {"image", "depth"}


@pytest.mark.parametrize("classes,folder", [(7, "label_7"), (19, "label_19"), (2, "label_7")])
def test_cityscapes_class_schemes(tmp_path: Path, classes: int, folder: str) -> None:
    root = make_cityscapes(tmp_path)
    builder = _builder("cityscapes", root=str(root), num_classes=classes)
    assert [(t.name, t.channels) for t in builder.tasks()] == [("segmentation", classes), ("depth", 1)]
    s = builder.dataset("train", False)[2]
    stored = np.load(root / "train" / folder / "2.npy").astype(np.int64)
    if classes == 2:
        expected = np.where(stored >= 0, MAP_7_TO_2[stored.clip(min=0)], -1)
        # hand check of the scheme: human (5) and vehicle (6) are class 1, the rest 0
        assert MAP_7_TO_2.tolist() == [0, 0, 0, 0, 0, 1, 1]
    else:
        expected = stored
    assert torch.equal(s["segmentation"], torch.from_numpy(expected))
    assert set(s) == {"image", "segmentation", "depth"}


def test_cityscapes_rejects_other_class_counts() -> None:
    with pytest.raises(ConfigError, match="2, 7 or 19"):
        _builder("cityscapes", num_classes=13)


def _break(root: Path, case: str) -> tuple[str, str]:
    """Damage one file of sample 1 of train; returns (file name, expected message part)."""
    p = root / "train"
    if case == "missing":
        (p / "label/1.npy").unlink()
        return "label/1.npy", "missing file"
    if case == "shape":
        np.save(p / "normal/1.npy", np.zeros((H, W), np.float32))
        return "normal/1.npy", "wrong shape"
    if case == "hw":
        np.save(p / "depth/1.npy", np.ones((H + 1, W, 1), np.float32))
        return "depth/1.npy", "is 9x12 but the sample's image is 8x12"
    if case == "nan":
        d = np.ones((H, W, 1), np.float32)
        d[2, 3] = np.nan
        np.save(p / "depth/1.npy", d)
        return "depth/1.npy", "NaN/inf"
    if case == "range":
        lab = np.zeros((H, W), np.float32)
        lab[0, 0] = 13
        np.save(p / "label/1.npy", lab)
        return "label/1.npy", "label values 13 out of range"
    if case == "fraction":
        np.save(p / "label/1.npy", np.full((H, W), 0.5, np.float32))
        return "label/1.npy", "non-integer"
    if case == "truncated":
        data = (p / "image/1.npy").read_bytes()
        (p / "image/1.npy").write_bytes(data[: len(data) // 2])
        return "image/1.npy", "truncated or corrupt"
    if case == "garbage":
        (p / "image/1.npy").write_bytes(b"not a numpy file at all")
        return "image/1.npy", "not a .npy file (a text file"
    if case == "dtype":
        np.save(p / "depth/1.npy", np.ones((H, W, 1), np.int32))
        return "depth/1.npy", "wrong dtype int32"
    if case == "unit":
        np.save(p / "normal/1.npy", np.full((H, W, 3), 0.5, np.float32))
        return "normal/1.npy", "not unit length"
    if case == "image_range":
        np.save(p / "image/1.npy", np.full((H, W, 3), 255.0, np.float32))
        return "image/1.npy", "expected RGB in"
    raise AssertionError(case)


CASES = ["missing", "shape", "hw", "nan", "range", "fraction", "truncated", "garbage", "dtype", "unit", "image_range"]


@pytest.mark.parametrize("case", CASES)
def test_malformed_file_is_one_line_error_naming_it(tmp_path: Path, case: str) -> None:
    root = make_nyuv2(tmp_path)
    name, part = _break(root, case)
    if case == "missing":  # the folders disagree: refused when the dataset is built, as `data check` does
        with pytest.raises(DataError) as info:
            _builder("nyuv2", root=str(root)).dataset("train", False)
    else:
        ds = _builder("nyuv2", root=str(root)).dataset("train", False)
        ds[0]  # other samples still load
        with pytest.raises(DataError) as info:
            ds[1]
    msg = str(info.value)
    assert "\n" not in msg and str(root / "train" / name) in msg and part in msg


def test_gap_in_numbering_names_missing_file(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path)
    (root / "train/image/1.npy").unlink()
    with pytest.raises(DataError, match=r"train/image/1\.npy: missing file"):
        _builder("nyuv2", root=str(root)).dataset("train", False)
    (root / "val/image/x.npy").write_bytes(b"")
    with pytest.raises(DataError, match=r"val/image/x\.npy: unexpected file name"):
        _builder("nyuv2", root=str(root)).dataset("val", False)
    (root / "val/image/x.npy").unlink()
    assert len(NpyDenseDataset(root, "val", [normal_task(), depth_task()])) == 2
    with pytest.raises(DataError, match=r"val/label_7: folder not found"):
        NpyDenseDataset(root, "val", [segmentation_task(13)], label_dir="label_7")


# ---------------------------------------------------------------- augmentation


def _sample(h: int = 12, w: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    label = (torch.arange(h * w).reshape(h, w) % 9) - 1  # includes -1
    depth = torch.rand(1, h, w, generator=g) + 1
    depth[0, :2] = 0
    normal = torch.nn.functional.normalize(torch.randn(3, h, w, generator=g), dim=0)
    normal[:, 3] = 0
    return {"image": torch.rand(3, h, w, generator=g), "seg": label, "depth": depth, "normal": normal}


KINDS = {"seg": "segmentation", "depth": "depth", "normal": "normal"}


def test_scale_crop_is_nearest_zoom_with_depth_divided() -> None:
    s = _sample()
    aug = DenseAugment(KINDS, scales=[2.0], flip=False)
    out = aug(s, np.random.default_rng(3))
    # scale 2 on 12x16: a 6x8 window, each source pixel repeated 2x2 (nearest)
    code = torch.arange(12 * 16).reshape(1, 12, 16).float()
    coded = (
        DenseAugment({"c": "depth"}, scales=[2.0], flip=False)(
            {"image": s["image"], "c": code}, np.random.default_rng(3)
        )["c"]
        * 2
    )
    top, left = divmod(int(coded[0, 0, 0]), 16)
    window = (slice(top, top + 6), slice(left, left + 8))
    up = lambda t: t.repeat_interleave(2, -2).repeat_interleave(2, -1)  # noqa: E731
    assert torch.equal(out["seg"], up(s["seg"][window]))
    assert out["seg"].dtype == torch.int64
    assert torch.allclose(out["depth"], up(s["depth"][(slice(None), *window)]) / 2)
    assert torch.equal(out["normal"], up(s["normal"][(slice(None), *window)]))
    assert out["image"].shape == (3, 12, 16)
    inverse_aug = DenseAugment(KINDS, scales=[2.0], flip=False, depth_is_inverse=True)
    inverse = inverse_aug(s, np.random.default_rng(3))
    assert torch.allclose(inverse["depth"], out["depth"] * 4)


def test_scale_crop_invariants_over_many_draws() -> None:
    s = _sample()
    aug = DenseAugment(KINDS)  # scales 1.0/1.2/1.5, flip 0.5
    src_depth = s["depth"][s["depth"] != 0].double()
    seen_scales = set()
    for seed in range(30):
        out = aug(s, np.random.default_rng(seed))
        assert out["seg"].dtype == torch.int64
        assert set(out["seg"].unique().tolist()) <= set(s["seg"].unique().tolist())
        assert (out["seg"] == -1).any()
        d = out["depth"].double()
        valid = d != 0
        # every valid depth is a source depth divided by one scale drawn for the whole sample
        match = [
            k
            for k in (1.0, 1.2, 1.5)
            if torch.isclose((d[valid] * k)[:, None], src_depth[None], rtol=1e-6).any(1).all()
        ]
        assert len(match) >= 1
        seen_scales.add(match[0])
        # missing depth stays exactly 0 (no blending with neighbours): nothing between 0 and the minimum
        assert bool(((d == 0) | (d >= src_depth.min() / 1.5 - 1e-6)).all())
        n = out["normal"]
        ok = (n.abs().sum(0) == 0) | ((n.norm(dim=0) - 1).abs() < 1e-5)
        assert bool(ok.all())
    assert seen_scales == {1.0, 1.2, 1.5}


def test_flip_negates_normal_x_and_mirrors() -> None:
    s = _sample()
    out = DenseAugment(KINDS, scales=[1.0], flip_prob=1.0)(s, np.random.default_rng(0))
    assert torch.equal(out["seg"], s["seg"].flip(-1))
    assert torch.equal(out["depth"], s["depth"].flip(-1))
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(out["normal"][1:], s["normal"][1:].flip(-1))
    missing = s["normal"].abs().sum(0).flip(-1) == 0
    assert missing.any() and bool((out["normal"][:, missing] == 0).all())
    none = DenseAugment(KINDS, scales=[1.0], flip=False)(s, np.random.default_rng(0))
    assert all(torch.equal(none[k], s[k]) for k in s)


def test_augment_option_errors() -> None:
    with pytest.raises(ConfigError, match="dataset.options.scales"):
        DenseAugment.from_options(KINDS, {"scales": [0.5]})
    with pytest.raises(ConfigError, match="dataset.options.scales"):
        DenseAugment.from_options(KINDS, {"scales": 1.5})
    with pytest.raises(ConfigError, match="dataset.options.flip"):
        DenseAugment.from_options(KINDS, {"flip": "yes"})


def test_augmentation_deterministic_per_epoch_and_index_across_workers(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path, {"train": 4, "val": 1})
    ds = _builder("nyuv2", root=str(root), augment=True).dataset("train", True)
    assert ds.augment is not None
    assert _builder("nyuv2", root=str(root), augment=True).dataset("val", False).augment is None
    ds.set_epoch(1)
    direct = [ds[i] for i in range(4)]
    ds.set_epoch(2)
    other = [ds[i] for i in range(4)]
    assert any(not torch.equal(a["depth"], b["depth"]) for a, b in zip(direct, other))
    ds.set_epoch(1)
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    ds.set_epoch(0)
    list(loader)  # workers start under epoch 0
    ds.set_epoch(1)  # persistent workers see the new epoch
    batches = list(loader)
    for i in range(4):
        b = batches[i // 2]
        for key in direct[i]:
            assert torch.equal(b[key][i % 2], direct[i][key]), key


# ---------------------------------------------------------------- scenes


@pytest.mark.skipif(importlib.util.find_spec("mtlkit.data.scenes") is None, reason="renderer not present")
def test_scenes_builder_renders_into_layout(tmp_path: Path) -> None:
    cfg = dict(root=str(tmp_path), n_train=2, n_val=1, height=32, width=48, num_classes=7, options={"progress": False})
    builder = _builder("scenes", **cfg)
    kinds = [(t.name, t.channels) for t in builder.tasks()]
    assert kinds == [("segmentation", 7), ("depth", 1), ("normal", 3)]
    train, val = builder.dataset("train", True), builder.dataset("val", False)
    assert (len(train), len(val)) == (2, 1)
    s = train[1]
    assert s["image"].shape == (3, 32, 48) and s["segmentation"].shape == (32, 48)
    assert s["depth"].shape == (1, 32, 48) and s["normal"].shape == (3, 32, 48)
    assert int(s["segmentation"].max()) < 7
    again = _builder("scenes", **cfg).dataset("train", False)[1]
    assert torch.equal(again["image"], s["image"])


# ---------------------------------------------------------------- mtlkit data check


def test_check_reports_clean_folders(tmp_path: Path) -> None:
    report = check_dataset("nyuv2", make_nyuv2(tmp_path / "nyu"))
    assert report.ok and report.counts == {"train": 3, "val": 2}
    assert report.stats["train"]["label"].files == 3 and report.stats["val"]["normal"].files == 2
    assert report.stats["train"]["label"].vmin == -1 and report.stats["train"]["label"].vmax <= 12
    assert any("published nyuv2 set has 795" in n for n in report.notes)
    text = report.format()
    assert "train  label" in text and text.endswith("OK: no problems found")
    cs = check_dataset("cityscapes", make_cityscapes(tmp_path / "cs"))
    assert cs.ok and set(cs.stats["val"]) == {"image", "depth", "label_7", "label_19"}
    only19 = check_dataset("cityscapes", tmp_path / "cs", num_classes=19)
    assert set(only19.stats["train"]) == {"image", "depth", "label_19"}


def test_check_lists_every_problem_one_line_each(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path)
    expected = [_break(root, "nan"), _break(root, "range"), _break(root, "truncated")]
    (root / "val/normal/0.npy").unlink()
    report = check_dataset("nyuv2", root)
    assert not report.ok
    assert len(report.problems) == 4
    assert all("\n" not in p for p in report.problems)
    for name, part in expected:
        assert any(p.startswith(str(root / "train" / name)) and part in p for p in report.problems)
    assert f"{root / 'val/normal/0.npy'}: missing file" in report.problems
    assert "FAILED: 4 problem(s)" in report.format()
    assert check_dataset("nyuv2", root, num_classes=13).problems == report.problems
    with pytest.raises(ConfigError, match="unknown dataset"):
        check_dataset("mnist", root)


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_cityscapes(tmp_path)
    assert main(["data", "check", "cityscapes", str(root), "--quiet"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    np.save(root / "val/label_19/1.npy", np.full((H, W), 19, np.int64))
    assert main(["data", "check", "cityscapes", str(root), "--quiet", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == [f"{root / 'val/label_19/1.npy'}: label values 19 out of range, expected 0..18 or -1"]
    assert main(["data", "check", "cityscapes", str(tmp_path / "none"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset folder not found" in err
    proc = subprocess.run(
        [sys.executable, "-m", "mtlkit", "data", "check", "cityscapes", str(root), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "val/label_19/1.npy: label values 19" in proc.stdout


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nyuv2", "cityscapes"])
def test_train_runs_on_real_layouts(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    h, w = 32, 32
    for split in ("train", "val"):
        for i in range(2):
            arrays = {
                "image": rng.random((h, w, 3), np.float32),
                "depth": rng.uniform(0, 5, (h, w, 1)).astype(np.float32),
            }
            if name == "nyuv2":
                arrays["label"] = rng.integers(-1, 13, (h, w)).astype(np.float32)
                arrays["normal"] = _normals(rng, h, w)
            else:
                arrays["label_7"] = rng.integers(-1, 7, (h, w)).astype(np.float32)
            save_sample(tmp_path / "data", split, i, arrays)
    run = tmp_path / "run"
    args = [
        "train",
        f"dataset.name={name}",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.augment=true",
        "model.arch=mtan",
        "model.width=0.125",
        "train.epochs=1",
        "train.batch_size=2",
        "train.max_steps_per_epoch=1",
        "train.progress=false",
        "train.loggers=[]",
        f"out_dir={tmp_path}",
        "--run-dir",
        str(run),
    ]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    tasks = ["segmentation", "depth", "normal"] if name == "nyuv2" else ["segmentation", "depth"]
    assert [t["name"] for t in results["tasks"]] == tasks
    assert "segmentation/miou" in results["final"] and "depth/abs_err" in results["final"]
