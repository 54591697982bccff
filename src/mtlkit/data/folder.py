"""Your own data without code: ``dataset.name=folder dataset.root=DIR``.

Layout::

    DIR/tasks.yaml                      the tasks: name, kind, channels, options
    DIR/{train,val}/images/<stem>.png   (or .jpg, .npy) RGB images
    DIR/{train,val}/<task>/<stem>.png   (or .npy) the task's target for that image

``tasks.yaml``::

    tasks:
      - {name: seg, kind: segmentation, channels: 5, options: {ignore_index: 255}}
      - {name: fg, kind: binary}
      - {name: normal, kind: normal, partial: true}   # some images have no normals file

A task marked ``partial: true`` is partially labelled: an image may lack its target file (the sample then
carries the kind's unlabelled target and ``"<task>/labelled" = False``, see
:func:`mtlkit.tasks.base.labelled_key`); for any other task a missing file is an error.

Targets are read by their task kind (``TaskKind.from_file``): labels from 8/16-bit PNGs or integer
``.npy``, float maps from ``.npy`` (H, W) / (C, H, W) / (H, W, C). Images may differ in size: with
``dataset.height`` and ``width`` set every sample is brought to that size (``dataset.options.fit``:
``resize`` stretches the whole image, ``crop`` takes the largest centred window of the right
aspect ratio), images bilinearly and targets by nearest neighbour (labels stay labels; values are
not rescaled: the scene is the same). Unset, all images must share one size. ``dataset.augment``
applies the scale-crop and flip of :mod:`mtlkit.data.augment`. ``mtlkit data check folder DIR``
validates every file.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mtlkit.config import DatasetConfig
from mtlkit.data.augment import DenseAugment, _nearest_index
from mtlkit.data.base import DatasetBuilder
from mtlkit.errors import ConfigError, DataError, MtlkitError, shorten
from mtlkit.readers import read_yaml_file
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task, make_task
from mtlkit.tasks.base import RESERVED_NAMES, labelled_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
TARGET_SUFFIXES = (".png", ".npy")
FIT_MODES = ("resize", "crop")
OPTIONS = ("fit", "scales", "flip", "flip_prob")


def partial_tasks(root: Path) -> frozenset[str]:
    """The names of the tasks ``root/tasks.yaml`` marks ``partial: true`` (read after :func:`read_tasks` checked it)."""
    data = read_yaml_file(root / "tasks.yaml")
    return frozenset(e["name"] for e in data["tasks"] if e.get("partial") is True)


def read_tasks(root: Path) -> list[Task]:
    """The tasks ``root/tasks.yaml`` declares; any problem is a ConfigError naming the file."""
    path = root / "tasks.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found (the folder dataset declares its tasks there)")
    data = read_yaml_file(path)
    entries = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a non-empty list under 'tasks'")
    tasks: list[Task] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or "kind" not in entry:
            raise ConfigError(f"{path}: tasks[{i}] needs at least 'name' and 'kind'")
        extra = set(entry) - {"name", "kind", "channels", "options", "partial"}
        if extra:
            raise ConfigError(
                f"{path}: tasks[{i}] has unknown key {sorted(extra)[0]!r} "
                "(keys: name, kind, channels, options, partial)"
            )
        if not isinstance(entry.get("partial", False), bool):
            raise ConfigError(f"{path}: tasks[{i}].partial must be true or false, got {shorten(entry['partial'])}")
        name, kind = entry["name"], entry["kind"]
        if not isinstance(name, str) or not isinstance(kind, str):
            raise ConfigError(
                f"{path}: tasks[{i}]: name and kind must be strings (got name {shorten(name)}, kind {shorten(kind)})"
            )
        if not name or "/" in name or "\\" in name or "." in name or name in ("images", *RESERVED_NAMES):
            raise ConfigError(
                f"{path}: task name {shorten(name)} must be a plain folder name other than "
                f"'images' and {', '.join(repr(n) for n in RESERVED_NAMES)}"
            )
        options = entry.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ConfigError(f"{path}: tasks[{i}].options must be a mapping of option names")
        try:
            tasks.append(make_task(kind, name, entry.get("channels"), **options))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: task names must be unique (got {', '.join(names)})")
    return tasks


#: Pillow modes an input image is read in as stored (grey, RGB, RGBA, 16-bit grey); any other
#: (palette, CMYK, YCbCr, grey + alpha, 1-bit, 32-bit) is converted to RGB as a viewer shows it
_IMAGE_MODES = ("L", "RGB", "RGBA", "I;16", "I;16B", "I;16L")


def read_array(path: Path, image: bool = False) -> np.ndarray:
    """A file's array: ``.npy`` as stored, image files via Pillow; DataError if unreadable.

    Image files are turned by their EXIF orientation, as viewers and annotation tools show them.
    ``image``: the file is an input image, so palette, CMYK and other colour modes become RGB
    (a target keeps its stored values: a palette PNG's indices are its class ids).
    """
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image, ImageOps

        with Image.open(path) as img:
            shown = ImageOps.exif_transpose(img)
            if image and shown.mode not in _IMAGE_MODES:
                shown = shown.convert("RGB")
            return np.asarray(shown)
    except Exception as err:  # noqa: BLE001  (any reader failure is a bad file)
        raise DataError(
            f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def image_tensor(array: np.ndarray, path: Path) -> Tensor:
    """(3, H, W) float32 from an (H, W), (H, W, 3|4) or (3, H, W) array; 8-bit values scaled to [0, 1]."""
    a = array
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise DataError(f"{path}: image must be (H, W, 3) RGB, got shape {tuple(array.shape)}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535.0
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: image holds NaN/inf")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0)))


def _stems(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Stem -> file of the files with one of ``suffixes`` in ``folder`` (hidden files skipped)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        out.setdefault(path.stem, path)
    return out


def fit_window(h: int, w: int, size: tuple[int, int], mode: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the source window brought to ``size``: all of it, or a centred crop."""
    if mode == "resize":
        return 0, 0, h, w
    th, tw = size
    ch, cw = (h, max(1, round(h * tw / th))) if w * th >= h * tw else (max(1, round(w * th / tw)), w)
    ch, cw = min(ch, h), min(cw, w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class FolderDataset(Dataset):
    """One split of a folder dataset: ``{"image": (3, H, W), <task>: target}`` samples.

    Every sample's files are read, checked by its task kind and brought to ``size`` on access, so a
    bad file stops training with one line naming it. ``augment`` uses a generator derived from
    ``(seed, epoch, index)``; call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: Sequence[Task],
        size: tuple[int, int] | None = None,
        fit: str = "resize",
        augment: DenseAugment | None = None,
        max_samples: int | None = None,
        seed: int = 0,
        partial: Collection[str] = (),
    ) -> None:
        self.root, self.split, self.tasks = Path(root), split, list(tasks)
        #: the partially labelled tasks: a missing file is an unlabelled sample, not an error
        self.partial = frozenset(partial)
        self.fit, self.augment, self.seed = fit, augment, int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        split_dir = self.root / split
        if not (split_dir / "images").is_dir():
            raise DataError(f"{split_dir / 'images'}: folder not found")
        images = _stems(split_dir / "images", IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{split_dir / 'images'}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.stems = sorted(images)[:max_samples] if max_samples else sorted(images)
        self.images = images
        self.targets: dict[str, dict[str, Path]] = {}
        for task in self.tasks:
            files = _stems(split_dir / task.name, TARGET_SUFFIXES)
            missing = [s for s in self.stems if s not in files]
            if missing and task.name not in self.partial:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DataError(
                    f"{split_dir / task.name / missing[0]}.png: missing target of image {images[missing[0]].name}{more}"
                )
            self.targets[task.name] = files
        self.resizes = size is not None
        if size is None:
            first = self._raw(0)["image"]
            size = (int(first.shape[-2]), int(first.shape[-1]))
        #: (H, W) every sample has: the configured size, else the first image's
        self.size: tuple[int, int] = size

    def __len__(self) -> int:
        return len(self.stems)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (shared with already started workers)."""
        self._epoch.fill_(int(epoch))

    def _raw(self, index: int) -> dict[str, Tensor]:
        """Sample ``index`` as stored (checked, not resized)."""
        stem = self.stems[index]
        path = self.images[stem]
        sample = {"image": image_tensor(read_array(path, image=True), path)}
        hw = (int(sample["image"].shape[-2]), int(sample["image"].shape[-1]))
        for task in self.tasks:
            tpath = self.targets[task.name].get(stem)
            if task.name in self.partial:
                sample[labelled_key(task.name)] = torch.tensor(tpath is not None)
            sample[task.name] = task.unlabelled(hw) if tpath is None else load_target(task, tpath, hw)
        return sample

    def labelled_counts(self) -> dict[str, int]:
        """Per task, how many of the split's samples have its target file (all of them for a fully labelled task)."""
        return {t.name: sum(s in self.targets[t.name] for s in self.stems) for t in self.tasks}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.stems):
            raise IndexError(f"sample {index} out of range (split {self.split!r} has {len(self.stems)})")
        sample = self._raw(index)
        h, w = sample["image"].shape[-2:]
        if (h, w) != self.size:
            if not self.resizes:
                raise DataError(
                    f"{self.images[self.stems[index]]}: image is {h}x{w}, earlier ones differ; "
                    "set dataset.height and dataset.width"
                )
            sample = resize_sample(sample, self.tasks, self.size, self.fit)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed % 2**32, int(self._epoch.item()), int(index)])
            sample = self.augment(sample, rng)
        return sample


def load_target(task: Task, path: Path, hw: tuple[int, int]) -> Tensor:
    """The target of ``task`` in ``path``, checked by its kind and against the image size ``hw``."""
    array = read_array(path)
    try:
        target = task.spec.from_file(task, array)
    except MtlkitError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot be read as a {task.kind} target ({err})") from None
    problem = task.check_target(target.numpy())
    if problem is None and task.dense and tuple(target.shape[-2:]) != hw:
        problem = f"target is {target.shape[-2]}x{target.shape[-1]} but its image is {hw[0]}x{hw[1]}"
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    return target


def resize_sample(
    sample: dict[str, Tensor], tasks: Sequence[Task], size: tuple[int, int], fit: str
) -> dict[str, Tensor]:
    """Bring a sample to ``size``: bilinear image, nearest-neighbour targets (their kind resamples them)."""
    h, w = sample["image"].shape[-2:]
    top, left, ch, cw = fit_window(h, w, size, fit)
    img = sample["image"][:, top : top + ch, left : left + cw]
    out = {"image": F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]}
    rows, cols = _nearest_index(size[0], ch, top), _nearest_index(size[1], cw, left)
    for task in tasks:
        out[task.name] = task.spec.resize(task, sample[task.name], rows, cols)
    for key, value in sample.items():  # the rest as it is (a partially labelled task's flag)
        out.setdefault(key, value)
    return out


@DATASETS.register("folder")
class FolderBuilder(DatasetBuilder):
    """A user's folder of images and per-task targets described by its ``tasks.yaml``."""

    dataset_class = FolderDataset

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        for key in cfg.options:
            if key not in OPTIONS:
                raise ConfigError(
                    f"dataset.options.{key}: unknown option for dataset 'folder' (known: {', '.join(OPTIONS)})"
                )
        self.fit = cfg.options.get("fit", "resize")
        if self.fit not in FIT_MODES:
            raise ConfigError(f"dataset.options.fit: expected one of {', '.join(FIT_MODES)} (got {self.fit!r})")
        if cfg.num_classes is not None:
            raise ConfigError("dataset.num_classes: the folder dataset takes classes from tasks.yaml (channels)")
        if (cfg.height is None) != (cfg.width is None):
            raise ConfigError("dataset.height and dataset.width: set both or neither")
        self._tasks: list[Task] | None = None

    def root(self) -> Path:
        """``dataset.root`` as an existing folder."""
        if self.cfg.root is None:
            raise ConfigError("dataset.root: required for dataset 'folder' (the folder holding tasks.yaml)")
        root = Path(self.cfg.root).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found (dataset.root of 'folder')")
        return root

    def all_tasks(self) -> list[Task]:
        """The tasks of ``tasks.yaml``."""
        if self._tasks is None:
            self._tasks = read_tasks(self.root())
        return list(self._tasks)

    def size(self) -> tuple[int, int] | None:
        """The configured (H, W), or None to keep the stored size."""
        if self.cfg.height is None or self.cfg.width is None:  # both or neither (checked in __init__)
            return None
        return (int(self.cfg.height), int(self.cfg.width))

    def dataset(self, split: str, train: bool) -> FolderDataset:
        """The samples of ``split`` (augmented when ``train`` and ``dataset.augment``)."""
        if split not in self.splits:
            raise ConfigError(f"split {split!r} not provided by 'folder' (it has {', '.join(self.splits)})")
        tasks = self.tasks()
        augment = None
        if train and self.cfg.augment:
            augment = DenseAugment.from_options({t.name: t for t in tasks}, self.cfg.options)
        cap = self.cfg.n_train if split == "train" else self.cfg.n_val
        return FolderDataset(
            self.root(), split, tasks, self.size(), self.fit, augment, cap, self.cfg.seed, partial_tasks(self.root())
        )

    def check_files(self, progress: bool = False) -> Any:
        """Every file of every split checked: one problem line per file (``mtlkit data check folder DIR``)."""
        from mtlkit.data.check import CheckReport, FolderStats

        root = self.root()
        tasks = self.all_tasks()
        partial = partial_tasks(root)
        report = CheckReport(name="folder", root=root, kinds={"images": "image"})
        for split in self.splits:
            split_dir = root / split
            images = _stems(split_dir / "images", IMAGE_SUFFIXES)
            report.counts[split] = len(images)
            if not images:
                report.problems.append(f"{split_dir / 'images'}: no image files ({', '.join(IMAGE_SUFFIXES)})")
                continue
            report.stats[split] = {"images": FolderStats(), **{t.name: FolderStats() for t in tasks}}
            files = {t.name: _stems(split_dir / t.name, TARGET_SUFFIXES) for t in tasks}
            for t in tasks:
                if not (split_dir / t.name).is_dir():
                    report.problems.append(f"{split_dir / t.name}: folder not found (task {t.name!r})")
                    continue
                for stem in sorted(set(files[t.name]) - set(images)):
                    report.problems.append(f"{files[t.name][stem]}: no image with this name in {split_dir / 'images'}")
            for stem, path in images.items():
                try:
                    image = image_tensor(read_array(path, image=True), path)
                except DataError as err:
                    report.problems.append(str(err))
                    continue
                _account(report.stats[split]["images"], image)
                hw = (int(image.shape[-2]), int(image.shape[-1]))
                for t in tasks:
                    if stem not in files[t.name]:
                        if (split_dir / t.name).is_dir() and t.name not in partial:
                            report.problems.append(f"{split_dir / t.name / stem}.png: missing (target of {path.name})")
                        continue
                    try:
                        target = load_target(t, files[t.name][stem], hw)
                    except DataError as err:
                        report.problems.append(str(err))
                        continue
                    _account(report.stats[split][t.name], target, int(t.spec.missing(t, target).sum()))
            report.labelled[split] = {t.name: sum(s in files[t.name] for s in images) for t in tasks}
            if self.size() is None:
                shapes = report.stats[split]["images"].shapes
                if len(shapes) > 1:
                    report.notes.append(
                        f"{split}: images differ in size; set dataset.height and dataset.width to train on them"
                    )
        return report


def _account(stats, tensor: Tensor, missing: int = 0) -> None:
    """Add one checked tensor to a folder's statistics, with its ``missing`` (ignored / no value) pixels."""
    values = tensor.numpy()
    pixels = values.shape[-2] * values.shape[-1] if values.ndim >= 2 else 1
    stats.add(
        values, values.reshape(values.shape[-2], -1) if values.ndim >= 2 else values.reshape(1, -1), missing, pixels
    )
