"""CityScapes as the MTAN authors preprocessed it (``dataset.name=cityscapes``).

``ROOT/{train,val}/image/{i}.npy`` (128x256x3 RGB in [0, 1]), ``label_7/{i}.npy`` and
``label_19/{i}.npy`` (class ids, -1 = ignore) and ``depth/{i}.npy`` (128x256x1 inverse depth /
disparity as distributed, 0 = missing; used as the depth target unchanged); 2975 train and 500
val samples. Tasks: segmentation with ``dataset.num_classes`` in {2, 7, 19} (default 7) and depth.

Class schemes:

- 19: the standard Cityscapes evaluation classes (``label_19``).
- 7: the Cityscapes *categories* without void, in order: 0 flat, 1 construction, 2 object,
  3 nature, 4 sky, 5 human, 6 vehicle (``label_7``).
- 2: derived from ``label_7`` for the task-complexity study, splitting the scene into the
  categories whose classes Cityscapes annotates as countable instances ("things": human and
  vehicle -> class 1) and everything else ("stuff": flat, construction, object, nature, sky ->
  class 0); ignore (-1) stays -1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlkit.config import DatasetConfig
from mtlkit.data.npy import NpyBuilder
from mtlkit.errors import ConfigError
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task, depth_task, segmentation_task

CITYSCAPES_SIZE = (128, 256)
CITYSCAPES_COUNTS = {"train": 2975, "val": 500}
CLASSES_7 = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CLASSES_2 = ("stuff", "thing")
#: 7-class id -> 2-class id (human and vehicle are the "thing" categories)
MAP_7_TO_2 = np.array([0, 0, 0, 0, 0, 1, 1], dtype=np.int64)
SCHEMES = (2, 7, 19)


@DATASETS.register("cityscapes")
class CityscapesBuilder(NpyBuilder):
    """Segmentation (2, 7 or 19 classes) and inverse depth on street scenes."""

    depth_is_inverse = True
    published_counts = CITYSCAPES_COUNTS
    published_size = CITYSCAPES_SIZE

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        self.num_classes = cfg.num_classes or 7
        if self.num_classes not in SCHEMES:
            raise ConfigError(f"dataset.num_classes: cityscapes offers 2, 7 or 19 classes (got {cfg.num_classes})")

    def all_tasks(self) -> list[Task]:
        """Segmentation (``num_classes``) and depth."""
        return [segmentation_task(self.num_classes), depth_task()]

    def label_source(self) -> tuple[str, np.ndarray | None]:
        """``label_19`` or ``label_7``; the 2-class scheme maps ``label_7`` through MAP_7_TO_2."""
        if self.num_classes == 19:
            return "label_19", None
        if self.num_classes == 7:
            return "label_7", None
        return "label_7", MAP_7_TO_2

    def label_folders(self) -> dict[str, int]:
        """Both stored label folders unless ``num_classes`` picks one."""
        if self.cfg.num_classes is None:
            return {"label_7": 7, "label_19": 19}
        return {self.label_source()[0]: 19 if self.num_classes == 19 else 7}

    def data_root(self) -> Path:
        """``dataset.root``, which must exist."""
        return self._real_root()
