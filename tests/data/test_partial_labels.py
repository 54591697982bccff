"""Partially labelled data: the folder dataset's ``partial: true`` tasks and ``dataset.label_fraction``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers.folders import write_folder
from mtlkit.config import Config, config_from_dict
from mtlkit.data.folder import FolderBuilder
from mtlkit.data.partial import LabelFraction, labelled_indices
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.tasks.base import labelled_key

TASKS = (
    "tasks:\n  - {name: seg, kind: segmentation, channels: 3, options: {ignore_index: 255}}\n"
    "  - {name: fg, kind: binary%s}\n"
)


def _folder(root: Path, partial: str) -> FolderBuilder:
    write_folder(root, TASKS % partial)
    for stem in ("train001", "train004"):  # two training images without a fg mask
        (root / "train" / "fg" / f"{stem}.png").unlink()
    return FolderBuilder(
        config_from_dict({"dataset": {"name": "folder", "root": str(root), "height": 32, "width": 32}}).dataset
    )


def test_missing_target_file_is_an_error_unless_the_task_is_partial(tmp_path: Path) -> None:
    builder = _folder(tmp_path / "full", "")
    with pytest.raises(DataError, match=r"train/fg/train001\.png: missing target"):
        builder.dataset("train", train=False)
    builder = _folder(tmp_path / "part", ", partial: true")
    ds = builder.dataset("train", train=False)
    assert ds.labelled_counts() == {"seg": 6, "fg": 4}
    flags = [bool(ds[i][labelled_key("fg")]) for i in range(len(ds))]
    assert flags == [True, False, True, True, False, True]
    assert labelled_key("seg") not in ds[0]  # fully labelled: no flag
    unlabelled = ds[1]["fg"]
    assert unlabelled.shape == (32, 32) and bool(
        (unlabelled == -1).all()
    )  # every pixel fg's ignore_index (binary default -1)
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch[labelled_key("fg")].tolist() == flags


def test_partial_must_be_a_boolean(tmp_path: Path) -> None:
    builder = _folder(tmp_path, ", partial: 3")
    with pytest.raises(ConfigError, match=r"tasks\.yaml: tasks\[1\]\.partial must be true or false"):
        builder.tasks()


def test_data_check_counts_labelled_samples(tmp_path: Path) -> None:
    report = _folder(tmp_path, ", partial: true").check_files()
    assert report.ok, report.problems
    assert report.labelled["train"] == {"seg": 6, "fg": 4}
    assert "labelled train: seg 6/6, fg 4/6" in report.format()


def test_labelled_indices_are_fixed_seeded_and_sized() -> None:
    a = labelled_indices(50, 0.1, seed=3, task="normal")
    assert a == labelled_indices(50, 0.1, seed=3, task="normal")  # a pure function of its arguments
    assert len(a) == 5 and a == sorted(set(a)) and all(0 <= i < 50 for i in a)
    assert a != labelled_indices(50, 0.1, seed=4, task="normal")
    assert a != labelled_indices(50, 0.1, seed=3, task="depth")
    assert len(labelled_indices(5, 0.01, seed=0, task="t")) == 1  # at least one label
    assert labelled_indices(7, 1.0, seed=0, task="t") == list(range(7))


class _Samples(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": torch.full((3, 4, 4), float(i)),
            "segmentation": torch.zeros(4, 4, dtype=torch.int64),
            "normal": torch.nn.functional.normalize(torch.ones(3, 4, 4), dim=0),
        }


def test_label_fraction_keeps_the_same_subset_every_epoch_and_records_it() -> None:
    tasks = [segmentation_task(3), normal_task()]
    ds = LabelFraction(_Samples(40), tasks, {"normal": 0.1}, seed=7)
    keep = labelled_indices(40, 0.1, seed=7, task="normal")
    for _ in range(2):  # two passes (epochs): the same samples keep their normals
        flags = [bool(ds[i][labelled_key("normal")]) for i in range(40)]
        assert [i for i, f in enumerate(flags) if f] == keep
    off = next(i for i in range(40) if i not in keep)
    assert bool((ds[off]["normal"] == 0).all())  # the kind's missing value: 0 = no normal
    assert bool((ds[keep[0]]["normal"] != 0).any())
    assert labelled_key("segmentation") not in ds[0]
    assert ds.describe() == {"normal": {"fraction": 0.1, "seed": 7, "labelled": 4, "samples": 40}}
    # a fresh wrapper (a resumed run, another process) picks the same subset
    assert LabelFraction(_Samples(40), tasks, {"normal": 0.1}, seed=7).labelled == ds.labelled


def test_label_fraction_names_unknown_tasks_and_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="dataset.label_fraction: unknown task 'normals'"):
        LabelFraction(_Samples(4), [depth_task()], {"normals": 0.5}, seed=0)
    with pytest.raises(ConfigError, match=r"label_fraction\.normal must be in \(0, 1\]"):
        config_from_dict({"dataset": {"label_fraction": {"normal": 0.0}}})


def test_label_fraction_is_hash_neutral_when_unset() -> None:
    assert Config().hash() == config_from_dict({"dataset": {"label_fraction": {}}}).hash()
    assert Config().hash() != config_from_dict({"dataset": {"label_fraction": {"normal": 0.1}}}).hash()
