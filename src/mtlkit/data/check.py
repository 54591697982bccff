"""``mtlkit data check``: validate every file of a ``.npy``-layout dataset folder before training.

Runs the same per-file checks the loader runs lazily (:mod:`mtlkit.data.npy`) over all files of
all splits, collecting every problem as one line naming the file instead of stopping at the first,
and summarises counts, shapes, dtypes and value ranges per split and folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtlkit.config import DatasetConfig
from mtlkit.data.base import DatasetBuilder
from mtlkit.data.consistency import sample_indices
from mtlkit.data.npy import NpyBuilder, load_npy, read_image
from mtlkit.errors import ConfigError, DataError
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task


@dataclass
class FolderStats:
    """What one modality folder of one split holds."""

    files: int = 0
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    dtypes: set[str] = field(default_factory=set)
    vmin: float = float("inf")
    vmax: float = float("-inf")
    special: int = 0  # pixels that carry no value: ignore labels, missing depth/normals (the task kind says)
    pixels: int = 0

    def add(self, raw: np.ndarray, values: np.ndarray, special: int, pixels: int | None = None) -> None:
        """Account one file: its stored shape/dtype, checked values and special (ignore/missing) pixels, out
        of ``pixels`` (None: ``values``' first two dimensions, an (H, W, ...) array)."""
        self.files += 1
        self.shapes.add(tuple(raw.shape))
        self.dtypes.add(str(raw.dtype))
        self.vmin = min(self.vmin, float(values.min()))
        self.vmax = max(self.vmax, float(values.max()))
        self.special += int(special)
        self.pixels += int(values.shape[0] * values.shape[1]) if pixels is None else int(pixels)


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`: per split and folder statistics, problems and notes."""

    name: str
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, dict[str, FolderStats]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: per split, per task: how many samples carry the task's target (folder datasets; partially labelled tasks)
    labelled: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no file has a problem."""
        return not self.problems

    def table(self) -> str:
        """The summary as an aligned text table, one row per split and folder."""
        head = ("split", "folder", "files", "shape", "dtype", "min", "max", "ignore/missing")
        rows = [head]
        for split, folders in self.stats.items():
            for folder, st in folders.items():
                shape = ", ".join("x".join(map(str, s)) for s in sorted(st.shapes)) or "-"
                dtype = ", ".join(sorted(st.dtypes)) or "-"
                lo = f"{st.vmin:.4g}" if st.files else "-"
                hi = f"{st.vmax:.4g}" if st.files else "-"
                frac = "-" if self.kinds.get(folder) == "image" or not st.pixels else f"{st.special / st.pixels:.1%}"
                rows.append((split, folder, str(st.files), shape, dtype, lo, hi, frac))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def format(self, max_problems: int = 50) -> str:
        """Table, notes and problems (at most ``max_problems`` listed) as printable text."""
        lines = [f"{self.name} at {self.root}", self.table()]
        for split, per_task in self.labelled.items():
            n = self.counts.get(split, 0)
            lines.append(f"labelled {split}: " + ", ".join(f"{t} {k}/{n}" for t, k in per_task.items()))
        lines += [f"note: {n}" for n in self.notes]
        shown = self.problems[:max_problems]
        lines += [f"problem: {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more problems")
        lines.append("OK: no problems found" if self.ok else f"FAILED: {len(self.problems)} problem(s)")
        return "\n".join(lines)


def _indices(folder: Path, report: CheckReport) -> set[int]:
    """Sample indices present in ``folder``; odd file names are problems."""
    found, odd = sample_indices(folder)
    report.problems += [f"{folder / name}: unexpected file name, expected <index>.npy" for name in odd]
    return found


def _check_file(
    report: CheckReport,
    stats: FolderStats,
    task: Task | None,
    path: Path,
    hw: tuple[int, int] | None,
    normal_tol: float,
) -> np.ndarray | None:
    """Validate one file (the image when ``task`` is None, else a target, read by the task's kind), record its
    statistics; a problem is appended and None returned."""
    try:
        pixels = None
        if task is None:
            values = read_image(path, hw)
            special = 0
        else:
            target = task.spec.read_npy(task, path, hw, normal_tol=normal_tol)
            special = int(task.spec.missing(task, target).sum())
            pixels = int(target.shape[-2] * target.shape[-1])
            values = target.numpy()
        raw = load_npy(path)
    except DataError as err:
        report.problems.append(str(err))
        return None
    stats.add(raw, values, special, pixels)
    return values


def _builder(name: str, root: str | Path, num_classes: int | None) -> DatasetBuilder:
    """The registered builder of dataset ``name`` at ``root``."""
    cfg = DatasetConfig.model_validate({"name": name, "root": str(root), "num_classes": num_classes})
    return DATASETS.get(name)(cfg)


def _folders(builder: NpyBuilder) -> dict[str, Task | None]:
    """The modality folders to check: ``image`` (None) and each target folder with the task whose kind reads it
    (a label folder's task holds that folder's number of stored classes)."""
    folders: dict[str, Task | None] = {"image": None}
    tasks = builder.all_tasks()
    for task in tasks:
        if task.spec.npy_dir is not None and not task.spec.npy_labels:
            folders[task.spec.npy_dir] = task
    labels = next((t for t in tasks if t.spec.npy_labels), None)
    if labels is not None:
        for folder, classes in builder.label_folders().items():
            folders[folder] = replace(labels, channels=classes)
    return folders


def _present(report: CheckReport, split_dir: Path, folders: dict[str, Task | None]) -> dict[str, set[int]]:
    """Sample indices in each modality folder of a split; a missing folder is a problem."""
    present: dict[str, set[int]] = {}
    for folder in folders:
        if not (split_dir / folder).is_dir():
            report.problems.append(f"{split_dir / folder}: folder not found")
        else:
            present[folder] = _indices(split_dir / folder, report)
    return present


def _check_split(
    report: CheckReport, builder: NpyBuilder, split_dir: Path, folders: dict[str, Task | None], progress: bool
) -> int:
    """Check every file of one split folder; returns its number of samples."""
    present = _present(report, split_dir, folders)
    every = set().union(*present.values()) if present else set()
    n = max(every) + 1 if every else 0
    if n == 0:
        report.problems.append(f"{split_dir / 'image'}: no .npy samples found")
    for folder, found in present.items():
        for i in sorted(set(range(n)) - found):
            report.problems.append(f"{split_dir / folder / f'{i}.npy'}: missing file")
    stats = report.stats[split_dir.name] = {f: FolderStats() for f in present}
    ref_hw: tuple[int, int] | None = None
    for i in tqdm(range(n), desc=f"check {split_dir.name}", disable=not progress, leave=False):
        hw = None
        if i in present.get("image", ()):
            path = split_dir / "image" / f"{i}.npy"
            img = _check_file(report, stats["image"], None, path, None, builder.normal_tol)
            if img is not None:
                hw = (img.shape[0], img.shape[1])
                if ref_hw is None:
                    ref_hw = hw
                elif hw != ref_hw:
                    report.problems.append(
                        f"{path}: image is {hw[0]}x{hw[1]} but earlier images are {ref_hw[0]}x{ref_hw[1]}"
                    )
        for folder, task in folders.items():
            if task is not None and i in present.get(folder, ()):
                _check_file(report, stats[folder], task, split_dir / folder / f"{i}.npy", hw, builder.normal_tol)
    return n


def _note_published(report: CheckReport, builder: NpyBuilder) -> None:
    """Notes where the sample counts or image size differ from the published set's."""
    for split, n in report.counts.items():
        expected = (builder.published_counts or {}).get(split)
        if expected is not None and n != expected:
            report.notes.append(f"{split}: {n} samples (the published {report.name} set has {expected})")
    if builder.published_size is not None and report.stats:
        sizes = {s[:2] for folders_ in report.stats.values() for s in folders_.get("image", FolderStats()).shapes}
        if sizes and sizes != {builder.published_size}:
            h, w = builder.published_size
            got = ", ".join(f"{a}x{b}" for a, b in sorted(sizes))
            report.notes.append(f"images are {got} (the published {report.name} set is {h}x{w})")


def check_dataset(name: str, root: str | Path, num_classes: int | None = None, progress: bool = False) -> CheckReport:
    """Validate every file of dataset ``name`` stored at ``root``; problems are collected, not raised."""
    builder = _builder(name, root, num_classes)
    own = builder.check_files(progress)
    if own is not None:
        return own
    if not isinstance(builder, NpyBuilder):
        raise ConfigError(f"dataset {name!r} is not stored in the .npy layout; nothing to check")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    folders = _folders(builder)
    report = CheckReport(name=name, root=root, kinds={f: "image" if t is None else t.kind for f, t in folders.items()})
    for split in builder.splits:
        split_dir = root / split
        if not split_dir.is_dir():
            report.problems.append(f"{split_dir}: split folder not found")
            continue
        report.counts[split] = _check_split(report, builder, split_dir, folders, progress)
    _note_published(report, builder)
    return report
