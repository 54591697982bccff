"""``mtlkit.fit`` and ``mtlkit train`` write one run folder format: same files, names and #P, one report table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import mtlkit
from helpers.folders import write_folder
from mtlkit.config import DatasetConfig, config_from_dict, load_config
from mtlkit.data.folder import FolderBuilder
from mtlkit.models import build_model
from mtlkit.report.runs import collect
from mtlkit.report.table import build_tables
from mtlkit.train.trainer import train
from mtlkit.weighting import DWA

TASKS_YAML = (
    "tasks:\n  - {name: seg, kind: segmentation, channels: 3, options: {ignore_index: 255}}\n"
    "  - {name: fg, kind: binary}\n"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "data", TASKS_YAML, n_train=4, n_val=2)
    return tmp_path / "data"


def _fit(folder: Path, run_dir: Path, **kwargs) -> Path:
    data = FolderBuilder(DatasetConfig(name="folder", root=str(folder), height=32, width=32))
    tasks = data.tasks()
    torch.manual_seed(0)
    model = build_model("mtan", tasks, width=0.125)
    return mtlkit.fit(
        model,
        tasks,
        data.dataset("train", train=True),
        data.dataset("val", train=False),
        epochs=1,
        batch_size=2,
        run_dir=run_dir,
        name="mine",
        **kwargs,
    )


def _train(folder: Path, out: Path) -> Path:
    cfg = config_from_dict(
        {
            "name": "mine",
            "out_dir": str(out),
            "dataset": {"name": "folder", "root": str(folder), "height": 32, "width": 32},
            "model": {"arch": "mtan", "width": 0.125},
            "optim": {"lr": 1e-3},
            "train": {"epochs": 1, "batch_size": 2, "progress": False},
        }
    )
    return train(cfg)


def _layout(run: Path) -> set[str]:
    """The run folder's files and folders, with the event file's changing name folded to ``tb/*``."""
    return {("tb/*" if p.parent.name == "tb" else str(p.relative_to(run))) for p in run.rglob("*")}


@pytest.mark.slow
def test_fit_and_train_write_the_same_run_folder(folder: Path, tmp_path: Path) -> None:
    fitted = _fit(folder, tmp_path / "runs" / "fit", progress=False)
    trained = _train(folder, tmp_path / "runs")
    assert _layout(fitted) == _layout(trained)
    assert {"config.yaml", "tb", "tb/*", "metrics.jsonl", "results.json"} <= _layout(fitted)
    a, b = (json.loads((r / "results.json").read_text()) for r in (fitted, trained))
    assert set(a) == set(b)
    assert (
        (a["arch"], a["weighting"], a["dataset"])
        == (b["arch"], b["weighting"], b["dataset"])
        == ("mtan", "equal", "folder")
    )
    assert a["params"] == b["params"]
    assert a["params_ratio"] == b["params_ratio"] is not None
    assert a["eval"] == b["eval"]
    # config.yaml: a valid config naming what ran; the same sections as mtlkit train's
    cfg = load_config(fitted / "config.yaml")
    assert (cfg.model.arch, cfg.model.width, cfg.dataset.name, cfg.dataset.root) == (
        "mtan",
        0.125,
        "folder",
        str(folder),
    )
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.name, cfg.optim.gamma) == (1, 2, "adam", 1.0)
    assert a["config_hash"] == cfg.hash()
    assert set(yaml.safe_load((fitted / "config.yaml").read_text())) == set(
        yaml.safe_load((trained / "config.yaml").read_text())
    )
    # one report: both runs are rows of one table (one dataset, one task set)
    tables = build_tables(collect([fitted, trained]).runs)
    assert len(tables) == 1


def test_fit_prints_the_run_folder_and_sizes_first(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _fit(folder, tmp_path / "fit", progress=True, loggers=[], max_steps_per_epoch=1)
    out = capsys.readouterr().out.splitlines()
    n_params = json.loads((run / "results.json").read_text())["params"]
    assert out[0] == (
        f"run folder: {run} | model: mtan, {n_params / 1e6:.2f} M parameters | "
        "data: 4 train / 2 val samples, 1 steps per epoch"
    )
    assert out[1].startswith("epoch   1 | seg loss ")
    assert not (run / "tb").exists()


def test_fit_loggers_take_names_and_objects_and_the_old_tensorboard_keyword_warns(folder: Path, tmp_path: Path) -> None:
    """``loggers``: registered names and Logger objects (which get the config, each epoch, the run's files and
    the status); the old ``tensorboard=False`` warns and means ``loggers`` without tensorboard."""
    from mtlkit.train.logging import Logger

    class Mine(Logger):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def log_params(self, params):
            self.calls.append(f"params {params['train']['loggers']}")

        def log_epoch(self, record):
            self.calls.append(f"epoch {record.epoch}")

        def log_artifact(self, path):
            self.calls.append(path.name)

        def finish(self, status):
            self.calls.append(status)

    mine = Mine()
    run = _fit(folder, tmp_path / "on", progress=False, loggers=["tensorboard", mine], max_steps_per_epoch=1)
    assert any((run / "tb").iterdir())
    assert mine.calls == [
        "params ['tensorboard']",
        "epoch 1",
        "results.json",
        "config.yaml",
        "metrics.jsonl",
        "finished",
    ]
    with pytest.warns(DeprecationWarning, match=r"fit\(tensorboard=...\) is deprecated"):
        run = _fit(folder, tmp_path / "off", progress=False, tensorboard=False, max_steps_per_epoch=1)
    assert not (run / "tb").exists() and load_config(run / "config.yaml").train.loggers == []


def test_fit_progress_follows_the_terminal(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``progress=None`` (the default): on where stderr is a terminal, off where it is not (a log file, CI)."""
    import sys

    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        _fit(folder, tmp_path / f"fit-{tty}", loggers=[], max_steps_per_epoch=1)
        printed = capsys.readouterr().out
        assert printed.startswith("run folder: ") is tty


def test_fit_names_registered_classes_by_their_registered_names(folder: Path, tmp_path: Path) -> None:
    data = FolderBuilder(DatasetConfig(name="folder", root=str(folder), height=32, width=32))
    tasks = data.tasks()
    model = build_model("hps", tasks, width=0.125)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    run = mtlkit.fit(
        model,
        tasks,
        data.dataset("train", train=True),
        data.dataset("val", train=False),
        weighting=DWA([t.name for t in tasks]),
        optimizer=optimizer,
        epochs=1,
        batch_size=2,
        run_dir=tmp_path / "fit",
        progress=False,
        loggers=[],
        max_steps_per_epoch=1,
    )
    results = json.loads((run / "results.json").read_text())
    assert (results["arch"], results["weighting"], results["dataset"]) == ("hps", "dwa", "folder")
    cfg = load_config(run / "config.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.weighting.name) == ("sgd", 0.01, 0.5, "dwa")


def test_fit_config_names_what_the_schema_cannot_hold(folder: Path, tmp_path: Path) -> None:
    """An optimizer and a scheduler the config schema has no name for: written as they are, not validated."""
    data = FolderBuilder(DatasetConfig(name="folder", root=str(folder), height=32, width=32))
    tasks = data.tasks()
    model = build_model("hps", tasks, width=0.125)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.002)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    run = mtlkit.fit(
        model,
        tasks,
        data.dataset("train", train=True),
        data.dataset("val", train=False),
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=1,
        batch_size=2,
        run_dir=tmp_path / "fit",
        progress=False,
        loggers=[],
        max_steps_per_epoch=1,
    )
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["optim"] == {
        "name": "rmsprop",
        "lr": 0.002,
        "weight_decay": 0,
        "momentum": 0,
        "scheduler": "CosineAnnealingLR",
    }
    assert json.loads((run / "results.json").read_text())["config_hash"] is None


class _TwoHeads(torch.nn.Module):
    """Any module returning {task: output}: no build arguments to record."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.seg, self.fg = torch.nn.Conv2d(4, 3, 1), torch.nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"seg": self.seg(h), "fg": self.fg(h)}


def test_fit_of_a_plain_module_claims_no_build_arguments(folder: Path, tmp_path: Path) -> None:
    data = FolderBuilder(DatasetConfig(name="folder", root=str(folder), height=32, width=32))
    run = mtlkit.fit(
        _TwoHeads(),
        data.tasks(),
        data.dataset("train", train=True),
        data.dataset("val", train=False),
        epochs=1,
        batch_size=2,
        run_dir=tmp_path / "fit",
        progress=False,
        loggers=[],
        max_steps_per_epoch=1,
    )
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["model"] == {"arch": "_TwoHeads"}  # no width or backbone a default would make up
    assert written["dataset"] == {
        "name": "folder",
        "tasks": ["seg", "fg"],
        "root": str(folder),
        "height": 32,
        "width": 32,
        "n_train": 4,
        "n_val": 2,
    }
    results = json.loads((run / "results.json").read_text())
    assert (results["arch"], results["params_ratio"], results["config_hash"]) == ("_TwoHeads", None, None)
