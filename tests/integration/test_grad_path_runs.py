"""The trainer takes ``weighting.grad_path: gramian`` and records the path in results.json; a method
that needs the K x D gradients is refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
