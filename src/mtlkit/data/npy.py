"""The per-sample ``.npy`` folder layout shared by NYUv2, CityScapes and the built-in scenes.

Layout (one file per sample and modality, samples numbered ``0 .. N-1`` without gaps)::

    ROOT/{split}/image/{i}.npy    H x W x 3 float RGB in [0, 1] (uint8 0..255 also accepted)
    ROOT/{split}/label/{i}.npy    H x W class ids (int or integer-valued float), -1 = ignore
    ROOT/{split}/depth/{i}.npy    H x W x 1 (or H x W) float, 0 = missing
    ROOT/{split}/normal/{i}.npy   H x W x 3 float unit vectors, 0 = missing

Files are memory-mapped and checked lazily when a sample is read: a missing, truncated or
malformed file raises a one-line :class:`DataError` naming it. The same checks back
``mtlkit data check`` (:mod:`mtlkit.data.check`), which runs them over every file up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlkit.config import DatasetConfig
from mtlkit.data.augment import DenseAugment
from mtlkit.data.base import DatasetBuilder
from mtlkit.data.consistency import check_sample_folders
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import Task

#: how far a valid normal's length may be from 1
NORMAL_TOLERANCE = 1e-2
#: how far image values may stray outside [0, 1] (rounding of stored floats)
IMAGE_TOLERANCE = 1e-3


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


#: the first bytes of every .npy file
NPY_MAGIC = b"\x93NUMPY"


def _file_kind(head: bytes) -> str:
    """What a file that is not a .npy file looks like, from its first bytes."""
    if not head:
        return "empty file"
    if head.startswith(b"PK"):
        return "a zip archive, e.g. .npz: save one array per file with numpy.save"
    if head[:1] == b"\x80":
        return "pickled Python data: save the array with numpy.save"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return "unknown binary content"


def load_npy(path: Path) -> np.ndarray:
    """Memory-map one ``.npy`` file; a missing, truncated or non-``.npy`` file is a DataError."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except FileNotFoundError:
        raise DataError(f"{path}: missing file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if head != NPY_MAGIC:
        raise DataError(f"{path}: not a .npy file ({_file_kind(head)}; a .npy file starts with the \\x93NUMPY header)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing file") from None
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable .npy file, truncated or corrupt ({_first_line(err)})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: not a single-array .npy file")
    return arr


def _shape_error(path: Path, what: str, arr: np.ndarray, expected: str) -> DataError:
    return DataError(f"{path}: wrong shape {tuple(arr.shape)} for {what}, expected {expected}")


def _check_hw(path: Path, arr: np.ndarray, hw: tuple[int, int] | None, what: str) -> None:
    if hw is not None and tuple(arr.shape[:2]) != tuple(hw):
        raise DataError(f"{path}: {what} is {arr.shape[0]}x{arr.shape[1]} but the sample's image is {hw[0]}x{hw[1]}")


def _require_float(path: Path, arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind != "f":
        raise DataError(f"{path}: wrong dtype {arr.dtype} for {what}, expected a float type")


def _require_finite(path: Path, arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: {what} has {bad} NaN/inf value(s)")


def read_image(path: Path, hw: tuple[int, int] | None = None) -> np.ndarray:
    """A checked H x W x 3 float32 image in [0, 1]."""
    arr = load_npy(path)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _shape_error(path, "image", arr, "(H, W, 3)")
    _check_hw(path, arr, hw, "image")
    if arr.dtype == np.uint8:
        return np.array(arr, dtype=np.float32) / 255.0
    _require_float(path, arr, "image")
    out = np.array(arr, dtype=np.float32)
    _require_finite(path, out, "image")
    lo, hi = float(out.min()), float(out.max())
    if lo < -IMAGE_TOLERANCE or hi > 1 + IMAGE_TOLERANCE:
        raise DataError(f"{path}: image values span [{lo:.4g}, {hi:.4g}], expected RGB in [0, 1]")
    return out


def read_label(path: Path, num_classes: int, hw: tuple[int, int] | None = None) -> np.ndarray:
    """A checked H x W int64 label map with values in [0, num_classes) or -1 (ignore)."""
    arr = load_npy(path)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise _shape_error(path, "label", arr, "(H, W)")
    _check_hw(path, arr, hw, "label")
    if arr.dtype.kind == "f":
        values = np.asarray(arr)
        _require_finite(path, values, "label")
        if not (values == np.round(values)).all():
            raise DataError(f"{path}: label has non-integer values, expected class ids or -1")
        out = values.astype(np.int64)
    elif arr.dtype.kind in "iu":
        out = np.asarray(arr).astype(np.int64)
    else:
        raise DataError(f"{path}: wrong dtype {arr.dtype} for label, expected integers or floats")
    bad = (out != -1) & ((out < 0) | (out >= num_classes))
    if bad.any():
        values = np.unique(out[bad])
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DataError(f"{path}: label values {shown} out of range, expected 0..{num_classes - 1} or -1")
    return out


def read_depth(path: Path, hw: tuple[int, int] | None = None) -> np.ndarray:
    """A checked H x W x 1 float32 depth map, non-negative, 0 = missing."""
    arr = load_npy(path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != 1:
        raise _shape_error(path, "depth", arr, "(H, W, 1) or (H, W)")
    _check_hw(path, arr, hw, "depth")
    _require_float(path, arr, "depth")
    out = np.array(arr, dtype=np.float32)
    _require_finite(path, out, "depth")
    if (out < 0).any():
        raise DataError(f"{path}: depth has negative values (min {float(out.min()):.4g}), expected >= 0")
    return out


def read_normal(path: Path, hw: tuple[int, int] | None = None, tol: float = NORMAL_TOLERANCE) -> np.ndarray:
    """A checked H x W x 3 float32 normal map: unit vectors where valid, exactly 0 where missing."""
    arr = load_npy(path)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _shape_error(path, "normal", arr, "(H, W, 3)")
    _check_hw(path, arr, hw, "normal")
    _require_float(path, arr, "normal")
    out = np.array(arr, dtype=np.float32)
    _require_finite(path, out, "normal")
    x, y, z = out[..., 0], out[..., 1], out[..., 2]
    norm = np.sqrt(x * x + y * y + z * z)
    bad = np.abs(norm - 1) > tol
    if bad.any():
        bad &= (x != 0) | (y != 0) | (z != 0)  # exactly 0 = missing
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(
            f"{path}: {int(bad.sum())} normal(s) not unit length (pixel ({row}, {col}) has length "
            f"{float(norm[row, col]):.4g}); expected unit vectors, or 0 where missing"
        )
    return out


class NpyDenseDataset(Dataset):
    """Samples of one split of a ``.npy``-layout folder, as the dict of tensors the trainer expects.

    ``tasks`` are tasks whose kind is stored in the layout (its ``npy_dir``: segmentation, depth, normal);
    each is read from its kind's folder by its kind (``TaskKind.read_npy``), class ids from ``label_dir``
    (kinds with ``npy_labels``). ``label_map`` (optional) maps stored class ids to the task's
    classes (e.g. CityScapes 7 -> 2); stored ids are then checked against ``len(label_map)``.
    ``size`` (H, W), when given, must match the data (None parts are not checked). ``augment`` is
    applied with a generator derived from ``(seed, epoch, index)`` so a sample's augmentation does
    not depend on the number of loader workers; call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: Sequence[Task],
        label_dir: str = "label",
        size: tuple[int | None, int | None] | None = None,
        augment: DenseAugment | None = None,
        max_samples: int | None = None,
        seed: int = 0,
        label_map: Sequence[int] | np.ndarray | None = None,
        normal_tol: float = NORMAL_TOLERANCE,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.tasks = list(tasks)
        self.dirs: dict[str, str] = {}
        for task in self.tasks:
            folder = task.spec.npy_dir
            if folder is None:
                raise DataError(f"task {task.name!r} of kind {task.kind!r} has no .npy folder")
            self.dirs[task.name] = label_dir if task.spec.npy_labels else folder
        self.label_map = None if label_map is None else np.asarray(label_map, dtype=np.int64)
        self.augment = augment
        self.seed = int(seed)
        self.normal_tol = float(normal_tol)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: split folder not found")
        for task in self.tasks:
            target_dir = split_dir / self.dirs[task.name]
            if not target_dir.is_dir():
                raise DataError(f"{target_dir}: folder not found (needed for task {task.name!r})")
        n = check_sample_folders(split_dir, list(dict.fromkeys(["image", *self.dirs.values()])))
        self.num_samples = n if max_samples is None else min(n, int(max_samples))

        first = load_npy(self.path("image", 0))
        if first.ndim != 3 or first.shape[2] != 3:
            raise _shape_error(self.path("image", 0), "image", first, "(H, W, 3)")
        self.hw = (int(first.shape[0]), int(first.shape[1]))
        if size is not None:
            for key, want, have in zip(("height", "width"), size, self.hw):
                if want is not None and int(want) != have:
                    raise DataError(
                        f"{self.path('image', 0)}: images are {self.hw[0]}x{self.hw[1]} but dataset.{key} "
                        f"is {want}; set it to the data's size (or leave it unset)"
                    )

    def path(self, folder: str, index: int) -> Path:
        """The file of sample ``index`` in modality folder ``folder``."""
        return self.root / self.split / folder / f"{index}.npy"

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (shared with already started workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation stream samples are drawn from."""
        return int(self._epoch.item())

    def __len__(self) -> int:
        return self.num_samples

    def _target(self, task: Task, index: int) -> Tensor:
        path = self.path(self.dirs[task.name], index)
        return task.spec.read_npy(task, path, self.hw, label_map=self.label_map, normal_tol=self.normal_tol)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Sample ``index``: ``image`` (3, H, W) float32 plus one target per task, checked and augmented."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range (split {self.split!r} has {self.num_samples})")
        image = read_image(self.path("image", index), self.hw)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        for task in self.tasks:
            sample[task.name] = self._target(task, index)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed % 2**32, self.epoch, int(index)])
            sample = self.augment(sample, rng)
        return sample


#: ``dataset.options`` keys every ``.npy``-layout dataset understands
AUGMENT_OPTIONS = ("scales", "flip", "flip_prob")
COMMON_OPTIONS = (*AUGMENT_OPTIONS, "normal_tol")


class NpyBuilder(DatasetBuilder):
    """Shared builder of ``.npy``-layout datasets: options check, split caps, augmentation.

    Subclasses give :meth:`all_tasks`, :meth:`data_root` and, when they differ from the defaults,
    :meth:`label_source` and :meth:`expected_size`. ``dataset.n_train`` / ``n_val`` cap the samples
    of the train / other splits; ``dataset.seed`` seeds the augmentation.
    """

    #: extra ``dataset.options`` keys the subclass understands
    extra_options: tuple[str, ...] = ()
    #: the depth maps hold inverse depth (disparity), scaled the other way by augmentation
    depth_is_inverse: bool = False
    #: samples per split of the published set (``data check`` notes a difference), if known
    published_counts: dict[str, int] | None = None
    #: (H, W) of the published set, if known
    published_size: tuple[int, int] | None = None

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        known = (*COMMON_OPTIONS, *self.extra_options)
        for key in cfg.options:
            if key not in known:
                raise ConfigError(
                    f"dataset.options.{key}: unknown option for dataset {cfg.name!r} (known: {', '.join(known)})"
                )
        tol = cfg.options.get("normal_tol", NORMAL_TOLERANCE)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol <= 0:
            raise ConfigError(f"dataset.options.normal_tol: expected a positive number (got {tol!r})")
        self.normal_tol = float(tol)
        if cfg.augment:
            DenseAugment.from_options({}, cfg.options)

    def data_root(self) -> Path:
        """The folder holding the split folders."""
        raise NotImplementedError

    def label_source(self) -> tuple[str, np.ndarray | None]:
        """Folder of the stored labels and an optional stored-id -> class map."""
        return "label", None

    def label_folders(self) -> dict[str, int]:
        """Stored label folders to validate and their number of stored classes (for ``data check``)."""
        folder, label_map = self.label_source()
        seg = [t for t in self.all_tasks() if t.spec.npy_labels]
        if not seg:
            return {}
        return {folder: seg[0].channels if label_map is None else len(label_map)}

    def expected_size(self) -> tuple[int | None, int | None] | None:
        """(H, W) the data must have: the configured height/width (None = whatever is stored)."""
        return (self.cfg.height, self.cfg.width)

    def _real_root(self) -> Path:
        """``dataset.root`` as an existing folder; unset or missing is a one-line error."""
        if self.cfg.root is None:
            raise ConfigError(
                f"dataset.root: required for dataset {self.cfg.name!r} (the folder holding train/ and val/)"
            )
        root = Path(self.cfg.root).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found (dataset.root of {self.cfg.name!r})")
        return root

    def dataset(self, split: str, train: bool) -> NpyDenseDataset:
        """The samples of ``split``; augmented when ``train`` and ``dataset.augment`` are both true."""
        if split not in self.splits:
            raise ConfigError(f"split {split!r} not provided by {self.cfg.name!r} (it has {', '.join(self.splits)})")
        tasks = self.tasks()
        augment = None
        if train and self.cfg.augment:
            targets: dict[str, str | Task] = {t.name: t for t in tasks}
            augment = DenseAugment.from_options(targets, self.cfg.options, self.depth_is_inverse)
        cap = self.cfg.n_train if split == "train" else self.cfg.n_val
        label_dir, label_map = self.label_source()
        return NpyDenseDataset(
            self.data_root(),
            split,
            tasks,
            label_dir=label_dir,
            size=self.expected_size(),
            augment=augment,
            max_samples=cap,
            seed=self.cfg.seed,
            label_map=label_map,
            normal_tol=self.normal_tol,
        )


def save_sample(root: str | Path, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one sample in the layout: ``arrays`` maps a modality folder (image, label, ...) to its array."""
    for folder, arr in arrays.items():
        path = Path(root) / split / folder / f"{index}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(arr))


def __getattr__(name: str):
    if name == "KIND_DIRS":  # deprecated in 0.3: a task kind declares its folder (TaskKind.npy_dir)
        import warnings

        warnings.warn(
            "mtlkit.data.npy.KIND_DIRS is deprecated and will be removed: a task kind's npy_dir "
            "(task.spec.npy_dir) names its folder in the .npy layout",
            DeprecationWarning,
            stacklevel=2,
        )
        from mtlkit.registry import TASK_KINDS

        return {n: c.npy_dir for n, c in TASK_KINDS.items() if c.npy_dir is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
