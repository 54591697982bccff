"""Sweeps: grid expansion and rules, skip finished / resume interrupted runs, failures recorded, CLI."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import yaml

from mtlkit import sweep as sweeps
from mtlkit.catalog import presets
from mtlkit.config import Config
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.sweep import worker as sweep_worker


def _sweep(tmp_path: Path, **extra) -> sweeps.Sweep:
    data = {
        "name": "t",
        "base": {"train": {"epochs": 2}, "model": {"width": 0.125}},
        "grid": {"model.arch": ["single", "mtan"], "weighting.name": ["equal", "dwa"], "seed": [0, 1]},
    }
    data.update(extra)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return sweeps.load_sweep(path)


class FakeTrainer:
    """Stands in for the trainer: writes the documented run files; can fail or be 'killed' per run name."""

    def __init__(self, fail: set[str] = frozenset(), kill: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, Path | None]] = []
        self.fail, self.kill = set(fail), set(kill)

    def __call__(self, cfg: Config, resume: Path | None, run_dir: Path) -> Path:
        self.calls.append((cfg.name, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"epoch 1")
        if cfg.name in self.fail:
            raise RuntimeError(f"loss is NaN in {cfg.name}")
        if cfg.name in self.kill:
            raise KeyboardInterrupt
        (run_dir / "results.json").write_text(json.dumps({"status": "finished", "name": cfg.name}))
        return run_dir


def test_grid_exclude_include_and_names(tmp_path: Path) -> None:
    sw = _sweep(
        tmp_path,
        exclude=[{"model.arch": "single", "weighting.name": ["dwa"]}],
        include=[{"model.arch": "mtan", "weighting.name": "uncertainty", "seed": 0}],
    )
    runs = sw.runs()
    assert [r.name for r in runs] == [
        "single-equal-s0",
        "single-equal-s1",
        "mtan-equal-s0",
        "mtan-equal-s1",
        "mtan-dwa-s0",
        "mtan-dwa-s1",
        "mtan-uncertainty-s0",
    ]
    r = runs[-1]
    assert (r.config.model.arch, r.config.weighting.name, r.config.seed) == ("mtan", "uncertainty", 0)
    assert r.config.train.epochs == 2 and r.config.model.width == 0.125 and r.config.name == "mtan-uncertainty-s0"
    # an include leaving out a grid key takes all of its values; duplicates are dropped
    sw2 = _sweep(tmp_path, include=[{"model.arch": "stan"}, {"model.arch": "mtan", "weighting.name": "dwa"}])
    names = [r.name for r in sw2.runs()]
    assert len(names) == 8 + 4 and len(set(names)) == len(names) and "stan-dwa-s1" in names
    # a template; fixed overrides (mapping values set as they are, then key=value strings)
    sw3 = _sweep(
        tmp_path,
        run_name="{model.arch}_{weighting.name}_seed{seed}",
        overrides={"dataset.tasks": ["segmentation", "depth"], "weighting.options": {}, "optim.lr": 0.01},
    )
    cfg = sw3.runs()[0].config
    assert sw3.runs()[0].name == "single_equal_seed0"
    assert cfg.dataset.tasks == ["segmentation", "depth"] and cfg.optim.lr == 0.01 and cfg.model.width == 0.125
    sw4 = sweeps.sweep_from_dict({"grid": {"seed": [3]}, "overrides": ["optim.lr=0.5"]}, overrides=["optim.lr=0.25"])
    assert sw4.runs()[0].config.optim.lr == 0.25 and sw4.runs()[0].name == "s3"


def test_sweep_file_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'grids'"):
        _sweep(tmp_path, grids={})
    with pytest.raises(ConfigError, match="exclude key 'model.archs' is not a grid key"):
        _sweep(tmp_path, exclude=[{"model.archs": "single"}])
    with pytest.raises(ConfigError, match="run mtan-equal-s0-lrr1: optim.lrr: unknown key"):
        _sweep(tmp_path, include=[{"model.arch": "mtan", "optim.lrr": 1.0}]).runs()
    with pytest.raises(ConfigError, match="both get the name 'run'"):
        _sweep(tmp_path, run_name="run").runs()
    with pytest.raises(ConfigError, match="run_name uses {optim.lr}"):
        _sweep(tmp_path, run_name="{optim.lr}").runs()
    with pytest.raises(ConfigError, match="base config 'nope.yaml' not found"):
        _sweep(tmp_path, base="nope.yaml")


def test_finished_skipped_interrupted_resumed_rest_trained(tmp_path: Path) -> None:
    sw = _sweep(tmp_path, grid={"model.arch": ["single", "mtan", "stan"]})
    out = tmp_path / "out"
    # by hand: a finished run and an interrupted one (checkpoint, no results)
    (out / "single" / "checkpoints").mkdir(parents=True)
    (out / "single" / "results.json").write_text(json.dumps({"status": "finished"}))
    (out / "mtan" / "checkpoints").mkdir(parents=True)
    (out / "mtan" / "checkpoints" / "last.pt").write_bytes(b"x")
    assert [r["action"] for r in sweeps.plan(sw, out)] == ["skip", "resume", "train"]
    trainer = FakeTrainer()
    outcome = sweeps.run_sweep(sw, out, train_fn=trainer, progress=False, log=lambda m: None)
    assert trainer.calls == [("mtan", out / "mtan"), ("stan", None)]
    state = json.loads((out / "sweep.json").read_text())
    assert [(r["name"], r["status"], r["last_action"]) for r in state["runs"]] == [
        ("single", "finished", "skipped"),
        ("mtan", "finished", "resumed"),
        ("stan", "finished", "trained"),
    ]
    assert outcome.ok and not (out / "sweep.lock").exists()
    # a second invocation trains nothing
    again = FakeTrainer()
    sweeps.run_sweep(sw, out, train_fn=again, progress=False, log=lambda m: None)
    assert again.calls == []


def test_failed_run_recorded_and_sweep_goes_on(tmp_path: Path) -> None:
    sw = _sweep(tmp_path, grid={"model.arch": ["single", "mtan", "stan"]})
    out = tmp_path / "out"
    outcome = sweeps.run_sweep(sw, out, train_fn=FakeTrainer(fail={"mtan"}), progress=False, log=lambda m: None)
    state = json.loads((out / "sweep.json").read_text())
    by = {r["name"]: r for r in state["runs"]}
    assert [r["name"] for r in outcome.failed] == ["mtan"]
    assert by["mtan"]["status"] == "failed" and by["mtan"]["error"] == "RuntimeError: loss is NaN in mtan"
    assert "RuntimeError" in (out / by["mtan"]["traceback"]).read_text()
    assert by["single"]["status"] == by["stan"]["status"] == "finished"
    # re-running retries the failed run: it left a checkpoint, so it is resumed
    trainer = FakeTrainer()
    outcome = sweeps.run_sweep(sw, out, train_fn=trainer, progress=False, log=lambda m: None)
    assert trainer.calls == [("mtan", out / "mtan")] and outcome.ok
    assert json.loads((out / "sweep.json").read_text())["runs"][1]["attempts"] == 2


def test_interrupt_is_recorded_then_resumed(tmp_path: Path) -> None:
    sw = _sweep(tmp_path, grid={"model.arch": ["single", "mtan"]})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        sweeps.run_sweep(sw, out, train_fn=FakeTrainer(kill={"single"}), progress=False, log=lambda m: None)
    state = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["interrupted", "pending"]
    assert not (out / "sweep.lock").exists()
    trainer = FakeTrainer()
    sweeps.run_sweep(sw, out, train_fn=trainer, progress=False, log=lambda m: None)
    assert trainer.calls == [("single", out / "single"), ("mtan", None)]


def test_changed_sweep_does_not_reuse_runs_of_the_old_config(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sweeps.run_sweep(
        _sweep(tmp_path, grid={"model.arch": ["mtan"]}), out, train_fn=FakeTrainer(), progress=False, log=lambda m: None
    )
    harmless = _sweep(tmp_path, grid={"model.arch": ["mtan"]}, overrides={"train.num_workers": 2})
    assert [r["action"] for r in sweeps.plan(harmless, out)] == ["skip"]
    changed = _sweep(tmp_path, grid={"model.arch": ["mtan"]}, base={"train": {"epochs": 9}})
    assert [r["action"] for r in sweeps.plan(changed, out)] == ["stale"]
    trainer = FakeTrainer()
    outcome = sweeps.run_sweep(changed, out, train_fn=trainer, progress=False, log=lambda m: None)
    assert trainer.calls == [] and "different config" in outcome.failed[0]["error"]


def test_lock_refuses_a_second_live_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.lock").write_text(str(os.getppid()))
    with pytest.raises(MtlkitError, match="being run by process"):
        sweeps.run_sweep(_sweep(tmp_path), out, train_fn=FakeTrainer(), progress=False, log=lambda m: None)
    (out / "sweep.lock").write_text("999999999")  # a dead process: its lock is taken over
    assert sweeps.run_sweep(_sweep(tmp_path), out, train_fn=FakeTrainer(), progress=False, log=lambda m: None).ok


def test_cli_dry_run_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mtlkit.cli import sweep as sweep_cli

    parser = argparse.ArgumentParser(prog="mtlkit")
    sweep_cli.register(parser.add_subparsers(dest="command"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "grid": {"model.arch": ["single", "mtan"]}}))
    out = tmp_path / "out"
    args = parser.parse_args(["sweep", str(path), "train.epochs=3", "--dry-run", "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "sweep s: 2 runs" in printed and "  mtan    train   model.arch=mtan" in printed and not out.exists()
    trainer = FakeTrainer(fail={"single"})
    monkeypatch.setattr(sweep_worker, "default_train", lambda: trainer)
    args = parser.parse_args(["sweep", str(path), "train.epochs=3", "--out", str(out), "--no-progress"])
    assert args.func(args) == 1
    assert "failed: single: RuntimeError" in capsys.readouterr().out
    assert [c[0] for c in trainer.calls] == ["single", "mtan"]
    assert yaml.safe_load((out / "mtan" / "config.yaml").read_text())["train"]["epochs"] == 3


@pytest.mark.parametrize(
    "name, n, key, values",
    [
        ("nyuv2_paper", 17 * 3, "weighting.name", {"equal", "uncertainty", "dwa"}),
        ("cityscapes_paper", 17 * 3, "weighting.name", {"equal", "uncertainty", "dwa"}),
        ("scenes_paper_cpu", 17, "weighting.name", {"equal", "uncertainty", "dwa"}),
        ("complexity_cityscapes", 21, "dataset.num_classes", {2, 7, 19}),
        ("complexity_scenes", 21, "dataset.num_classes", {2, 7, 13}),
    ],
)
def test_shipped_sweeps_expand(name: str, n: int, key: str, values: set) -> None:
    """The paper grids: 5 multi-task archs x 3 weightings + single/STAN with equal; complexity 3 x 7."""
    runs = sweeps.load_sweep(presets("sweep")[name]).runs()
    assert len(runs) == n and {r.assignment[key] for r in runs} == values
    assert {r.config.model.arch for r in runs} == {
        "single",
        "stan",
        "split_wide",
        "split_deep",
        "dense",
        "cross_stitch",
        "mtan",
    }
    assert all(r.config.weighting.name == "equal" for r in runs if r.config.model.arch in ("single", "stan"))
    assert all(r.config.weighting.options == {} for r in runs)
    if name.endswith("_paper"):  # the GPU paper grids: 3 seeds, the authors' cross-stitch, fp32, paper protocol
        assert {r.config.seed for r in runs} == {0, 1, 2}
        assert all(r.config.model.options == {"variant": "mtan"} for r in runs if r.config.model.arch == "cross_stitch")
        assert all(
            r.config.train.amp == "off"
            and r.config.eval.protocol == "mtan_paper"
            and not r.config.eval.select_best
            and r.config.eval.report_last == 10
            for r in runs
        )


@pytest.mark.slow
def test_real_tiny_sweep_end_to_end_then_report(scenes_cache: Path, tmp_path: Path) -> None:
    """Two tiny real trainings through the sweep runner, a re-run that skips both, and their report."""
    from mtlkit.report import ReportOptions, make_report

    base = {
        "dataset": {
            "name": "scenes",
            "root": str(scenes_cache),
            "num_classes": 7,
            "height": 32,
            "width": 64,
            "n_train": 8,
            "n_val": 4,
        },
        "model": {"width": 0.125},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 4, "progress": False, "loggers": []},
    }
    sw = sweeps.sweep_from_dict({"name": "e2e", "base": base, "grid": {"model.arch": ["single", "mtan"]}})
    out = tmp_path / "sweep"
    assert sweeps.run_sweep(sw, out, progress=False, log=lambda m: None).ok
    for name in ("single", "mtan"):
        results = json.loads((out / name / "results.json").read_text())
        assert results["status"] == "finished" and results["arch"] == name and results["epochs"] == 2
        assert (out / name / "checkpoints" / "best.pt").is_file()
    assert [r["action"] for r in sweeps.plan(sw, out)] == ["skip", "skip"]
    files = make_report([out], tmp_path / "report", ReportOptions(attention_images=1))
    md = files.markdown.read_text()
    assert "| Single-Task | n.a. |" in md and "| MTAN | Equal |" in md and "Δm % ↑" in md
    assert "attention_mtan_0.png" in [p.name for p in files.figures]
