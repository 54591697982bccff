"""The training loop end to end on tiny scenes: run folder, resume, NaN stop, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers.runs import train_until_killed
from mtlkit.errors import TrainingError
from mtlkit.train import step as step_module
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.trainer import load_run, train


def _val(run: Path) -> list[dict]:
    return [json.loads(line)["val"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents(tiny_cfg) -> None:
    cfg = tiny_cfg(train={"loggers": ["tensorboard"]})
    run = train(cfg)
    assert run.parent == Path(cfg.out_dir) and run.name.startswith("tiny-")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == cfg.to_dict()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert set(h["train"]) == {"loss/segmentation", "loss/depth", "loss/normal"}
        for key in (
            "segmentation/miou",
            "segmentation/pix_acc",
            "depth/abs_err",
            "depth/rel_err",
            "normal/mean",
            "normal/median",
            "normal/within_11.25",
            "loss/depth",
        ):
            assert key in h["val"]
        assert h["weights"] == {"segmentation": 1.0, "depth": 1.0, "normal": 1.0}
        assert h["epoch_time"] > 0
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "finished"
    assert res["params"] == sum(p.numel() for p in load_run(run)[1].parameters())
    assert res["params_ratio"] > 1
    assert res["config_hash"] == cfg.hash()
    assert res["versions"]["torch"] == torch.__version__
    assert res["final"] == history[-1]["val"]
    assert 1 <= res["best_epoch"] <= 2
    assert res["best"] == history[res["best_epoch"] - 1]["val"]
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / "checkpoints" / name)
        assert "model" in ckpt
    assert any((run / "tb").iterdir())


def test_training_lowers_the_loss(tiny_cfg) -> None:
    run = train(tiny_cfg(train={"epochs": 4}))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = history[0]["train"], history[-1]["train"]
    assert sum(last.values()) < sum(first.values())


def test_resume_after_kill_matches_uninterrupted(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(train={"epochs": 3}, dataset={"augment": True})
    straight = train(cfg, run_dir=Path(cfg.out_dir) / "straight")

    killed = Path(cfg.out_dir) / "killed"
    train_until_killed(cfg, killed, monkeypatch, at_step=2 * 4 + 2)  # 4 steps per epoch: dies in epoch 3
    assert len(_val(killed)) == 2
    assert not (killed / "results.json").exists()
    assert train(resume=killed) == killed
    assert _val(killed) == _val(straight)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_finished_run_does_nothing(tiny_cfg) -> None:
    run = train(tiny_cfg(train={"epochs": 1}))
    before = (run / "results.json").read_text()
    assert train(resume=run) == run
    assert (run / "results.json").read_text() == before


def test_non_finite_loss_stops_with_clear_message(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(train={"epochs": 3})
    calls = {"n": 0}
    original = step_module.StepRunner.losses

    def poisoned(self, preds, batch, present):
        calls["n"] += 1
        losses = original(self, preds, batch, present)
        return losses * float("nan") if calls["n"] > 5 else losses

    monkeypatch.setattr(step_module.StepRunner, "losses", poisoned)
    run = Path(cfg.out_dir) / "nan"
    with pytest.raises(TrainingError) as err:
        train(cfg, run_dir=run)
    msg = str(err.value)
    assert "non-finite training loss" in msg and "epoch 2 step 2" in msg and "last.pt" in msg
    kept = load_checkpoint(run / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_checkpoints_are_weights_only(tiny_cfg, tmp_path: Path) -> None:
    run = train(tiny_cfg(train={"epochs": 1}))
    torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="bad.pt: not a PyTorch checkpoint"):
        load_checkpoint(bad)
