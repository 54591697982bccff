"""The trainer takes ``weighting.grad_path: gramian`` and records the path in results.json; a method
that needs the K x D gradients is refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mtlkit
from mtlkit.errors import ConfigError
from mtlkit.train.trainer import train


@pytest.mark.slow
def test_gramian_path_trains_and_is_recorded(tiny_cfg) -> None:
    cfg = tiny_cfg(weighting={"name": "mgda", "grad_path": "gramian", "mode": "representation"}, train={"epochs": 1})
    run = train(cfg, run_dir=Path(cfg.out_dir) / "gramian")
    assert json.loads((run / "results.json").read_text())["grad_path"] == "gramian"


def test_gramian_path_with_a_method_that_needs_g_is_refused(tiny_cfg) -> None:
    cfg = tiny_cfg(weighting={"name": "graddrop", "grad_path": "gramian"}, train={"epochs": 1})
    with pytest.raises(ConfigError, match="grad_path: gramian .*GradDrop needs the K x D gradients"):
        train(cfg, run_dir=Path(cfg.out_dir) / "refused")
    assert not (Path(cfg.out_dir) / "refused" / "results.json").exists()


TASKS_YAML = (
    "tasks:\n  - {name: seg, kind: segmentation, channels: 3, options: {ignore_index: 255}}\n"
    "  - {name: fg, kind: binary}\n"
)


def _fit_inputs(tmp_path: Path):  # type: ignore[no-untyped-def]
    from helpers.folders import write_folder
    from mtlkit.config import DatasetConfig
    from mtlkit.data.folder import FolderBuilder
    from mtlkit.models import build_model

    write_folder(tmp_path / "data", TASKS_YAML, n_train=4, n_val=2)
    data = FolderBuilder(DatasetConfig(name="folder", root=str(tmp_path / "data"), height=32, width=32))
    tasks = data.tasks()
    torch.manual_seed(0)
    return (
        build_model("hps", tasks, width=0.125),
        tasks,
        data.dataset("train", train=True),
        data.dataset("val", train=False),
    )


@pytest.mark.slow
def test_fit_takes_the_same_paths(tmp_path: Path) -> None:
    model, tasks, train_set, val_set = _fit_inputs(tmp_path)
    common = {"epochs": 1, "batch_size": 2, "progress": False, "loggers": []}
    with pytest.raises(ConfigError, match="MoCo needs the K x D gradients"):
        mtlkit.fit(
            model, tasks, train_set, val_set, weighting="moco", grad_path="gramian", run_dir=tmp_path / "no", **common
        )
    assert not (tmp_path / "no").exists()  # refused before the run folder
    run = mtlkit.fit(
        model, tasks, train_set, val_set, weighting="upgrad", grad_path="gramian", run_dir=tmp_path / "run", **common
    )
    assert json.loads((run / "results.json").read_text())["grad_path"] == "gramian"
