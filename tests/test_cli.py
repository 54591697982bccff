"""The mtlkit command line: help, list, params, train/evaluate, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlkit.cli.main import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtlkit", *args], capture_output=True, text=True, timeout=300)


def test_help_for_every_command(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - the registered commands
    assert {"train", "evaluate", "list", "params"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: mtlkit" in capsys.readouterr().out


def test_list_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    archs = {"mtan", "single", "stan", "split_wide", "split_deep", "dense", "cross_stitch"}
    assert archs <= set(table["architectures"])
    assert {"equal", "dwa", "uncertainty"} <= set(table["weightings"])
    assert {"scenes", "nyuv2", "cityscapes"} <= set(table["datasets"])


def test_params_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--dataset", "nyuv2", "--arch", "mtan", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ratio"] == pytest.approx(1.77, rel=0.03)
    assert main(["params", "--dataset", "cityscapes", "--arch", "split_wide", "--width", "0.5"]) == 0
    assert "x one single-task network" in capsys.readouterr().out


def test_train_and_evaluate_through_the_cli(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(train={"epochs": 1})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = run_cli("train", str(path), "model.arch=split_wide", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["model"]["arch"] == "split_wide"
    proc = run_cli("evaluate", str(tmp_path / "r"), "--split", "val")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "r" / "eval-val-best.json").read_text())
    assert "segmentation/miou" in metrics


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "missing.yaml"], "missing.yaml: config file not found"),
        (["train", "--resume", "/nonexistent/run"], "not a run folder"),
        (["params", "--dataset", "nyuv2", "--arch", "nope"], "unknown architecture 'nope'"),
        (["evaluate", "/nonexistent/run"], "not a run folder"),
    ],
)
def test_errors_are_one_line_without_traceback(args: list[str], needle: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_missing_dataset_root_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("train", "nyuv2_mtan", f"dataset.root={tmp_path / 'nowhere'}", "train.epochs=1")
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
