"""Whether a split's files agree with each other, checked when a dataset is built (training refuses
what ``mtlkit data check`` reports: a folder holding fewer samples than its siblings, a gap in
the numbering, an oddly named file, a listed file that is missing).

Every dataset calls one of these: folder layouts (``.npy`` datasets, a ``folder`` dataset) call
:func:`check_sample_folders`, datasets that list their files (annotation files) call
:func:`require_files`. Both raise a one-line :class:`DataError` naming the first missing file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mtlkit.errors import DataError


def sample_indices(folder: Path, suffix: str = ".npy") -> tuple[set[int], list[str]]:
    """Indices ``i`` of the ``<i><suffix>`` files in ``folder``, and the other ``*<suffix>`` names (sorted)."""
    found: set[int] = set()
    odd: list[str] = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not name.endswith(suffix):
            continue
        stem = name[: -len(suffix)]
        if stem.isdigit() and str(int(stem)) == stem:
            found.add(int(stem))
        else:
            odd.append(name)
    return found, odd


def check_sample_folders(split_dir: Path, folders: Sequence[str], suffix: str = ".npy") -> int:
    """The number N of samples of a split whose every folder must hold ``0..N-1<suffix>``.

    N is one more than the highest index in any folder, so a folder with fewer files than its
    siblings is an error, not a shorter dataset. Raises a DataError naming the first problem: a
    missing folder, an unexpected file name, no samples, or the first missing file (lowest index;
    folders in the order given).
    """
    split_dir = Path(split_dir)
    present: dict[str, set[int]] = {}
    for folder in folders:
        path = split_dir / folder
        if not path.is_dir():
            raise DataError(f"{path}: folder not found")
        found, odd = sample_indices(path, suffix)
        if odd:
            raise DataError(
                f"{path / odd[0]}: unexpected file name, expected <index>{suffix} (0{suffix}, 1{suffix}, ...)"
            )
        present[folder] = found
    every = set().union(*present.values())
    if not every:
        raise DataError(f"{split_dir / folders[0]}: no {suffix} samples found")
    n = max(every) + 1
    gaps = [(min(set(range(n)) - found), folder) for folder, found in present.items() if len(found) != n]
    if gaps:
        index, folder = min(gaps, key=lambda g: (g[0], list(folders).index(g[1])))
        counts = ", ".join(f"{f}/ {len(present[f])}" for f in folders)
        raise DataError(
            f"{split_dir / folder / f'{index}{suffix}'}: missing file (the split's folders hold "
            f"{counts} files, samples 0..{n - 1} expected in each; `mtlkit data check` lists all)"
        )
    return n


def require_files(paths: Iterable[Path], listed_in: Path) -> None:
    """Raise a DataError naming the first of ``paths`` (the files ``listed_in`` names) that does not exist."""
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: missing file (listed in {listed_in})")
