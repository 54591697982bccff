"""``mtlkit data check folder``: the ignore/missing share of each task is what its kind leaves out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mtlkit.cli.main import main
from mtlkit.data.check import check_dataset

H, W = 20, 20
TASKS = """tasks:
  - {name: seg, kind: segmentation, channels: 3, options: {ignore_index: 255}}
  - {name: fg, kind: binary, options: {ignore_index: 7}}
  - {name: depth, kind: depth}
  - {name: normal, kind: normal}
  - {name: height, kind: regression, channels: 2, options: {invalid_value: -1.0}}
"""


def _write(root: Path) -> dict[str, int]:
    """Two train and one val sample with known holes; returns each task's number of holes per split."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tasks.yaml").write_text(TASKS)
    holes = {"seg": 20, "fg": 40, "depth": 60, "normal": 100, "height": 10}  # per sample, of H * W = 400
    for split, n in (("train", 2), ("val", 1)):
        for sub in ("images", "seg", "fg", "depth", "normal", "height"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{split}{i}"
            flat = rng.permutation(H * W)  # a different hole pattern per task and sample
            image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
            seg = rng.integers(0, 3, H * W).astype(np.uint8)
            seg[flat[: holes["seg"]]] = 255
            Image.fromarray(seg.reshape(H, W)).save(root / split / "seg" / f"{stem}.png")
            fg = rng.integers(0, 2, H * W).astype(np.uint8)
            fg[flat[: holes["fg"]]] = 7
            Image.fromarray(fg.reshape(H, W)).save(root / split / "fg" / f"{stem}.png")
            depth = rng.uniform(0.5, 5.0, H * W).astype(np.float32)
            depth[flat[: holes["depth"]]] = 0
            np.save(root / split / "depth" / f"{stem}.npy", depth.reshape(1, H, W))
            normal = rng.normal(size=(3, H * W)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=0, keepdims=True)
            normal[:, flat[: holes["normal"]]] = 0
            np.save(root / split / "normal" / f"{stem}.npy", normal.reshape(3, H, W))
            height = rng.uniform(0, 1, (2, H * W)).astype(np.float32)
            height[:, flat[: holes["height"]]] = -1.0  # both channels: the pixel has no value
            height[0, flat[holes["height"]]] = -1.0  # one channel only: the pixel still has one
            np.save(root / split / "height" / f"{stem}.npy", height.reshape(2, H, W))
    return holes


def test_folder_check_counts_each_kinds_holes(tmp_path: Path, capsys) -> None:
    holes = _write(tmp_path / "data")
    report = check_dataset("folder", tmp_path / "data")
    assert report.ok, report.problems
    for split, n in (("train", 2), ("val", 1)):
        for task, k in holes.items():
            stats = report.stats[split][task]
            assert (stats.special, stats.pixels) == (n * k, n * H * W), (split, task)
    assert main(["data", "check", "folder", str(tmp_path / "data")]) == 0
    rows = {
        tuple(line.split()[:2]): line.split()[-1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("train", "val"))
    }
    assert rows[("train", "seg")] == f"{20 / 400:.1%}" == "5.0%"
    assert rows[("val", "normal")] == "25.0%"
    assert rows[("train", "images")] == "-"
