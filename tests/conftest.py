"""Shared fixtures: a tiny config on the built-in scenes, cached once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.runs import tiny_config
from mtlkit.config import Config

# Tiny test models run fastest single-threaded, and several test processes (gloo, CLI subprocesses)
# share the 2 cores: one thread each avoids oversubscription (seen: 20x slower steps with 2 threads).
# MTLKIT_TEST_THREADS=2 (.ci/run's second pass over the numeric tests) changes the kernels' reduction
# order, so a tolerance tuned to one machine's rounding fails in CI, not on a user's machine.
THREADS = int(os.environ.get("MTLKIT_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


#: test folders whose tests carry the marker of the same name (make test-fast leaves them out)
TIER_FOLDERS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test under tests/integration/ or tests/e2e/ with its folder's name."""
    tests = Path(__file__).parent
    for item in items:
        folder = Path(item.path).relative_to(tests).parts[0]
        if folder in TIER_FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def scenes_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scene cache folder shared by every test (generation is deterministic)."""
    return tmp_path_factory.mktemp("scenes-cache")


@pytest.fixture
def tiny_cfg(scenes_cache: Path, tmp_path: Path):
    """Factory: ``tiny_cfg(model={"arch": "split_wide"}, train={"epochs": 3})``."""

    def make(**sections) -> Config:
        return tiny_config(scenes_cache, tmp_path / "runs", **sections)

    return make
