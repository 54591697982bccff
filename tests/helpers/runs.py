"""Runs the tests start: a tiny config on the built-in scenes, and a run killed at a given step."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlkit.config import Config, config_from_dict


def tiny_config(root: Path, out: Path, **sections) -> Config:
    """A run that takes seconds: 32x64 scenes, 16 train / 8 val samples, width-0.125 MTAN."""
    data = {
        "name": "tiny",
        "out_dir": str(out),
        "seed": 0,
        "dataset": {
            "name": "scenes",
            "root": str(root),
            "num_classes": 7,
            "height": 32,
            "width": 64,
            "n_train": 16,
            "n_val": 8,
        },
        "model": {"arch": "mtan", "width": 0.125},
        "weighting": {"name": "equal"},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 4, "progress": False, "loggers": []},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(data)


class Killed(BaseException):
    """Raised inside a training step to simulate a run killed mid-epoch.

    A BaseException, like the KeyboardInterrupt of Ctrl-C: a killed process records nothing, while
    an Exception is a failure the trainer records in results.json.
    """


def train_until_killed(cfg: Config, run_dir: Path, monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Start ``cfg`` in ``run_dir`` and die (``Killed``) at the ``at_step``-th training step (1-based)."""
    from mtlkit.train import step as step_module
    from mtlkit.train.trainer import train

    calls = {"n": 0}
    original = step_module.StepRunner.__call__

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == at_step:
            raise Killed
        return original(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(step_module.StepRunner, "__call__", dying)
        with pytest.raises(Killed):
            train(cfg, run_dir=run_dir)
