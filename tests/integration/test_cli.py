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


def test_list_shows_task_kinds_and_backbones(capsys: pytest.CaptureFixture) -> None:
    """What an own-data user needs: every registered task kind and backbone, in JSON and as text."""
    from mtlkit.models.backbones import BACKBONES, head_kind
    from mtlkit.registry import TASK_KINDS

    assert main(["list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert list(table["task kinds"]) == TASK_KINDS.names() and TASK_KINDS.names()
    assert list(table["backbones"]) == BACKBONES.names() and BACKBONES.names()
    for name in BACKBONES.names():
        assert table["backbones"][name].endswith(f"[heads: {head_kind(name)}]")
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for section, names in (("task kinds", TASK_KINDS.names()), ("backbones", BACKBONES.names())):
        block = text.split(f"\n{section}:\n", 1)[1].splitlines()[: len(names)]
        assert [line.split()[0] for line in block] == names


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "demo", "model.arch=mtna"], "unknown architecture 'mtna'; did you mean 'mtan'?"),
        (["train", "demo", "weighting.name=nash_mt"], "unknown weighting method 'nash_mt'; did you mean 'nash_mtl'?"),
        (["train", "demo", "dataset.name=NYU"], "unknown dataset 'NYU'; did you mean 'nyuv2'?"),
        (
            ["train", "demo", "model.arch=hps", "model.backbone=resnet50"],
            "unknown backbone 'resnet50'; did you mean 'resnet50_dilated'?",
        ),
        (
            ["data", "check", "folder", "d"],
            "d/tasks.yaml: unknown task kind 'segmentaton'; did you mean 'segmentation'?",
        ),
        (["params", "--dataset", "nyuv2", "--arch", "zzzz"], "unknown architecture 'zzzz' (choose one of: cgc, "),
    ],
)
def test_misspelled_names_suggest_the_nearest(
    args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every registry lookup (architecture, method, dataset, backbone, task kind) names the closest entry."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tasks.yaml").write_text("tasks:\n  - {name: seg, kind: segmentaton, channels: 3}\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtlkit: error: {needle}") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


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


def test_a_deprecated_config_key_is_one_warning_line(capsys: pytest.CaptureFixture) -> None:
    """Python hides DeprecationWarnings outside __main__; mtlkit prints its own as one line and still runs."""
    import warnings

    before = warnings.showwarning
    assert main(["config", "show", "demo", "train.tensorboard=false"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mtlkit: warning: train.tensorboard is deprecated"), err
    assert "Traceback" not in err and yaml.safe_load(out)["train"]["loggers"] == ["tensorboard"]
    assert warnings.showwarning is before  # main() restores the process's warning settings
    assert main(["config", "show", "demo"]) == 0 and capsys.readouterr().err == ""
