"""Results do not depend on what ran before in the process: a run resumed in a fresh process equals
an uninterrupted one, for gradient methods on either per-task gradient path (fixed by the config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtlkit
from helpers.runs import train_until_killed
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.trainer import train


def _val(run: Path) -> list[dict]:
    return [json.loads(line)["val"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), [("pcgrad", "loop"), ("mgda", "batched")])
def test_resume_in_fresh_process_equals_uninterrupted(
    tiny_cfg, monkeypatch: pytest.MonkeyPatch, method: str, path: str
) -> None:
    cfg = tiny_cfg(weighting={"name": method, "grad_path": path})
    straight = train(cfg, run_dir=Path(cfg.out_dir) / "straight")
    killed = Path(cfg.out_dir) / "killed"
    train_until_killed(cfg, killed, monkeypatch, at_step=4 + 2)  # 4 steps per epoch: dies in epoch 2
    assert len(_val(killed)) == 1
    src = str(Path(mtlkit.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "mtlkit", "train", "--resume", str(killed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _val(killed) == _val(straight)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
