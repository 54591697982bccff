"""Every weighting method trains MTAN on the tiny built-in scenes through the real trainer, and
stateful methods resume from a checkpoint exactly as an uninterrupted run (slow: whole runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers.runs import train_until_killed
from mtlkit.registry import WEIGHTINGS
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.trainer import train

pytestmark = pytest.mark.slow


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, cls in WEIGHTINGS.items():
        cases.append((name, "parameters"))
        if cls.needs_gradients and cls.supports_representation:
            cases.append((name, "representation"))
    return cases


@pytest.mark.parametrize("name,mode", _cases())
def test_method_trains_mtan_with_finite_decreasing_losses(tiny_cfg, name, mode):
    run = train(tiny_cfg(weighting={"name": name, "mode": mode}, train={"epochs": 3}))
    history = _history(run)
    totals = [sum(h["train"].values()) for h in history]
    assert all(math.isfinite(t) for t in totals)
    assert all(math.isfinite(w) for h in history for w in h["weights"].values())
    assert totals[-1] < totals[0], totals


@pytest.mark.parametrize("name", ["dwa", "rlw", "famo", "pcgrad", "gradvac", "gradnorm", "db_mtl", "uncertainty"])
def test_weighting_state_is_restored_on_resume(tiny_cfg, monkeypatch: pytest.MonkeyPatch, name):
    cfg = tiny_cfg(weighting={"name": name}, train={"epochs": 3})
    straight = train(cfg, run_dir=Path(cfg.out_dir) / "straight")
    killed = Path(cfg.out_dir) / "killed"
    train_until_killed(cfg, killed, monkeypatch, at_step=2 * 4 + 2)  # 4 steps per epoch: dies in epoch 3
    train(resume=killed)
    assert [h["weights"] for h in _history(killed)] == [h["weights"] for h in _history(straight)]
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["weighting"].keys() == b["weighting"].keys()
