"""NYUv2 as the MTAN authors preprocessed it (``dataset.name=nyuv2``).

``ROOT/{train,val}/{image,label,depth,normal}/{i}.npy``: 288x384 RGB in [0, 1], 13-class labels
(-1 = ignore), depth in metres (0 = missing), unit surface normals (0 = missing); 795 train and
654 val samples. ``mtlkit data prepare nyuv2`` makes this folder from the official release.
"""

from __future__ import annotations

from pathlib import Path

from mtlkit.config import DatasetConfig
from mtlkit.data.npy import NpyBuilder
from mtlkit.errors import ConfigError
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task, depth_task, normal_task, segmentation_task

NYUV2_CLASSES = 13
NYUV2_SIZE = (288, 384)
NYUV2_COUNTS = {"train": 795, "val": 654}


@DATASETS.register("nyuv2")
class NYUv2Builder(NpyBuilder):
    """13-class segmentation, depth and surface normals on indoor scenes."""

    published_counts = NYUV2_COUNTS
    published_size = NYUV2_SIZE

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        if cfg.num_classes not in (None, NYUV2_CLASSES):
            raise ConfigError(f"dataset.num_classes: nyuv2 has {NYUV2_CLASSES} classes (got {cfg.num_classes})")

    def all_tasks(self) -> list[Task]:
        """Segmentation (13 classes), depth and surface normals."""
        return [segmentation_task(NYUV2_CLASSES), depth_task(), normal_task()]

    def data_root(self) -> Path:
        """``dataset.root``, which must exist."""
        return self._real_root()
