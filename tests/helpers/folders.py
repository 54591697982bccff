"""A tiny folder dataset (`dataset.name: folder`) written on disk for the tests that train on one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: the stored image sizes (H, W), cycled over the samples: the folder reader resizes them
SIZES = [(40, 56), (48, 48), (36, 60), (44, 52), (64, 64), (40, 40)]


def write_folder(root: Path, tasks_yaml: str, n_train: int = 6, n_val: int = 3) -> None:
    """A tiny folder dataset: images of different sizes, 3-class labels (255 = ignore), 0/255 masks."""
    rng = np.random.default_rng(0)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "tasks.yaml").write_text(tasks_yaml)
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "seg", "fg"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = SIZES[(i + (split == "val")) % len(SIZES)]
            seg = np.zeros((h, w), np.uint8)
            seg[: h // 3] = 1  # wall on top
            cy, cx = rng.integers(h // 3, h - 8), rng.integers(4, w - 12)
            seg[cy : cy + 8, cx : cx + 10] = 2  # a thing
            seg[0, :4] = 255
            image = np.stack([seg * 90, (seg == 1) * 160, (seg == 2) * 200], -1).astype(np.float64)
            image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
            stem = f"{split}{i:03d}"
            Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
            Image.fromarray(seg).save(root / split / "seg" / f"{stem}.png")
            Image.fromarray(((seg == 2) * 255).astype(np.uint8)).save(root / split / "fg" / f"{stem}.png")
