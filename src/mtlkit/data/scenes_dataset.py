"""The built-in procedural indoor scenes (``dataset.name=scenes``), rendered once and cached.

The renderer (:mod:`mtlkit.data.scenes`) writes the ``.npy`` layout that the NYUv2 loader reads,
so both share :class:`~mtlkit.data.npy.NpyDenseDataset`. The cache lives in ``dataset.root`` when
set, else ``$MTLKIT_CACHE/scenes``, else ``~/.cache/mtlkit/scenes``; one sub-folder per setting
(size, sample counts, classes, seed), so changing a setting renders a new set.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtlkit.config import DatasetConfig
from mtlkit.data.npy import NpyBuilder
from mtlkit.errors import ConfigError
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task, depth_task, normal_task, segmentation_task

SCENES_DEFAULTS = {"num_classes": 13, "height": 96, "width": 128, "n_train": 400, "n_val": 100}


def default_cache_dir() -> Path:
    """Where generated data is cached: ``$MTLKIT_CACHE`` or ``~/.cache/mtlkit``."""
    env = os.environ.get("MTLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtlkit"


@DATASETS.register("scenes")
class ScenesBuilder(NpyBuilder):
    """Procedural rooms with exact depth, normals and per-object class labels (13 classes by default)."""

    #: ``progress``: a bar while rendering; ``class_names: true``: the segmentation task carries the
    #: scene classes' names, so runs also log each class's IoU (``iou_<name>``: the report's per-class figures)
    extra_options = ("progress", "class_names")

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        self.num_classes = cfg.num_classes or SCENES_DEFAULTS["num_classes"]
        self.height = cfg.height or SCENES_DEFAULTS["height"]
        self.width = cfg.width or SCENES_DEFAULTS["width"]
        self.n_train = cfg.n_train or SCENES_DEFAULTS["n_train"]
        self.n_val = cfg.n_val or SCENES_DEFAULTS["n_val"]
        self.progress = bool(cfg.options.get("progress", True))
        named = cfg.options.get("class_names", False)
        if not isinstance(named, bool):
            raise ConfigError(f"dataset.options.class_names: true or false, got {named!r}")
        self.class_names = named
        self._root: Path | None = None

    def all_tasks(self) -> list[Task]:
        """Segmentation (``num_classes``; with the classes' names under ``dataset.options.class_names``), depth and
        surface normals."""
        from mtlkit.data.scenes.classes import CLASS_NAMES

        if self.class_names:  # an option only where set: tasks without names keep their recorded form
            seg = segmentation_task(self.num_classes, class_names=CLASS_NAMES[self.num_classes])
        else:
            seg = segmentation_task(self.num_classes)
        return [seg, depth_task(), normal_task()]

    def cache_dir(self) -> Path:
        """The folder the renderer caches into."""
        if self.cfg.root is not None:
            return Path(self.cfg.root).expanduser()
        return default_cache_dir() / "scenes"

    def data_root(self) -> Path:
        """The rendered set for this config (rendered on first use, then read from the cache)."""
        if self._root is None:
            from mtlkit.data.scenes import ensure_generated

            self._root = Path(
                ensure_generated(
                    self.cache_dir(),
                    n_train=self.n_train,
                    n_val=self.n_val,
                    height=self.height,
                    width=self.width,
                    num_classes=self.num_classes,
                    seed=self.cfg.seed,
                    progress=self.progress,
                )
            )
        return self._root

    def expected_size(self) -> tuple[int | None, int | None]:
        """The rendered size (the renderer honours the configured height/width)."""
        return (self.height, self.width)
