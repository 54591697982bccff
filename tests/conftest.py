"""Shared fixtures: a tiny config on the built-in scenes, cached once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mtlkit.config import Config, config_from_dict

# Tiny test models run fastest single-threaded, and several test processes (gloo, CLI subprocesses)
# share the 2 cores: one thread each avoids oversubscription (seen: 20x slower steps with 2 threads).
# MTLKIT_TEST_THREADS=2 (.ci/run's second pass over the numeric tests) changes the kernels' reduction
# order, so a tolerance tuned to one machine's rounding fails in CI, not on a user's machine.
THREADS = int(os.environ.get("MTLKIT_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def scenes_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scene cache folder shared by every test (generation is deterministic)."""
    return tmp_path_factory.mktemp("scenes-cache")


def tiny_config(root: Path, out: Path, **sections) -> Config:
    """A run that takes seconds: 32x64 scenes, 16 train / 8 val samples, width-0.125 MTAN."""
    data = {
        "name": "tiny",
        "out_dir": str(out),
        "seed": 0,
        "dataset": {"name": "scenes", "root": str(root), "num_classes": 7, "height": 32, "width": 64,
                    "n_train": 16, "n_val": 8},
        "model": {"arch": "mtan", "width": 0.125},
        "weighting": {"name": "equal"},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 4, "progress": False, "loggers": []},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(data)


@pytest.fixture
def tiny_cfg(scenes_cache: Path, tmp_path: Path):
    """Factory: ``tiny_cfg(model={"arch": "split_wide"}, train={"epochs": 3})``."""

    def make(**sections) -> Config:
        return tiny_config(scenes_cache, tmp_path / "runs", **sections)

    return make


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
