"""A run killed (SIGKILL) at any of its writes resumes to the records of a run never killed.

The matrix: every atomic write of a 3-epoch run (config.yaml; per epoch last.pt, best.pt, metrics.jsonl;
results.json, 11 writes), for ``mtlkit train`` (then ``--resume``) and for a ``--parallel 2`` sweep
whose workers die at these points and whose driver is killed at once (then the sweep is run again
at once). Kills are deterministic (``tests/helpers/killpoints.py``), not races.

``train`` is killed in the middle of each write (its temp file written, not renamed), which leaves
the folder as it was after the write before plus a temp file, and once after the last write: the 12
states a kill can leave. The sweep's workers are killed right after each write.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from helpers.killpoints import (
    die_at_write,
    in_killed_child,
    outcome,
    record_writes,
    same_weights,
    temp_files,
)
from helpers.runs import tiny_config
from mtlkit import sweep as sweeps
from mtlkit.config import Config
from mtlkit.sweep.worker import default_train
from mtlkit.train.trainer import train

KILLED = -signal.SIGKILL
EPOCHS = 3


def _cfg(cache: Path, out: Path, seed: int = 0) -> Config:
    """3 epochs of 2 steps on 8 tiny scenes: every epoch improves, so every epoch writes best.pt."""
    return tiny_config(
        cache, out, seed=seed, train={"epochs": EPOCHS, "batch_size": 4}, dataset={"n_train": 8, "n_val": 4}
    )


def _straight(cfg: Config, run: Path) -> list[str]:
    """Train ``cfg`` into ``run`` uninterrupted; the run folder's atomic writes in order."""
    writes: list[str] = []
    undo = record_writes(run, writes)
    try:
        train(cfg, run_dir=run)
    finally:
        undo()
    return writes


def _expected_writes() -> list[str]:
    per_epoch = ["checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl"]
    return ["config.yaml", *per_epoch * EPOCHS, "results.json"]


@pytest.fixture(scope="module")
def reference(scenes_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, list[str]]]:
    """Per seed (0, 1): an uninterrupted run and its write sequence."""
    out = tmp_path_factory.mktemp("killpoints-reference")
    refs = {}
    for seed in (0, 1):
        run = out / f"s{seed}"
        refs[seed] = (run, _straight(_cfg(scenes_cache, out, seed), run))
    return refs


def _resume(cfg: Config, run: Path) -> None:
    """What a user does after the kill: ``--resume`` the folder, or run the same command when it has no config yet."""
    if (run / "config.yaml").is_file():
        train(resume=run)
    else:
        train(cfg, run_dir=run)


def _check_like_reference(run: Path, ref: Path, where: str) -> None:
    assert temp_files(run) == [], f"{where}: temp files left: {temp_files(run)}"
    got, want = outcome(run), outcome(ref)
    assert got == want, f"{where}: records differ from the uninterrupted run"
    assert got["best_pt_epoch"] == got["best_epoch"], where
    for name in ("last.pt", "best.pt"):
        assert same_weights(run / "checkpoints" / name, ref / "checkpoints" / name), f"{where}: {name} differs"


def test_every_epoch_writes_each_record(reference) -> None:
    """The matrix below covers what it claims: the writes of the first, middle and last epoch, best.pt included."""
    for _run, writes in reference.values():
        assert writes == _expected_writes()


def test_train_killed_at_every_write_resumes_to_the_same_records(reference, scenes_cache: Path, tmp_path: Path) -> None:
    ref, writes = reference[0]
    cfg = _cfg(scenes_cache, tmp_path)
    points = [(i, "during") for i in range(1, len(writes) + 1)] + [(len(writes), "after")]
    for index, mode in points:
        name = writes[index - 1]
        where = f"killed {mode} write {index} ({name})"
        run = tmp_path / f"w{index}-{mode}"

        def doomed(run: Path = run, index: int = index, mode: str = mode) -> None:
            die_at_write(run, index, mode)
            train(cfg, run_dir=run)

        assert in_killed_child(doomed) == KILLED, f"{where}: the run was not killed there"
        if mode == "during":
            assert temp_files(run), f"{where}: the kill left no temp file (the case is not exercised)"
        if index < len(writes) or mode == "during":
            assert not (run / "results.json").is_file(), f"{where}: results.json before the end"
        _resume(cfg, run)
        _check_like_reference(run, ref, where)


class DyingTrainer:
    """A sweep worker's train function that SIGKILLs its sweep driver, then itself, at a chosen write.

    ``kills``: run name -> 1-based index of the atomic write into its run folder after which both
    die. The worker's parent is the driver; an orphaned worker (driver already dead) dies alone.
    """

    def __init__(self, kills: dict[str, int]) -> None:
        self.kills = dict(kills)

    def __call__(self, cfg: Config, resume: Path | None, run_dir: Path) -> Path:
        if cfg.name in self.kills:
            driver = os.getppid()

            def kill_driver() -> None:
                if os.getppid() == driver:
                    os.kill(driver, signal.SIGKILL)

            die_at_write(run_dir, self.kills[cfg.name], "after", first=kill_driver)
        return default_train()(cfg, resume, run_dir)


def _sweep(cache: Path) -> sweeps.Sweep:
    base = _cfg(cache, cache).to_dict()
    base.pop("out_dir")
    base.pop("name")
    base.pop("seed")
    return sweeps.sweep_from_dict({"name": "kp", "base": base, "grid": {"seed": [0, 1]}, "run_name": "s{seed}"})


PARALLEL = sweeps.ExecutorOptions(local={"parallel": 2, "threads_per_run": 1})


@pytest.mark.slow
def test_parallel_sweep_killed_at_every_write_and_rerun_at_once(reference, scenes_cache: Path, tmp_path: Path) -> None:
    """Kill cycle c: run s0 dies at write 2c+1 and s1 at write 2c+2 (both after the write), the first
    death kills the driver; the other worker goes on as an orphan until its own point. The sweep is
    run again at once: it waits for an orphan still training (never a second worker on its run),
    resumes the killed runs, and every run ends with the records of its uninterrupted reference."""
    writes = reference[0][1]
    sw = _sweep(scenes_cache)
    for cycle in range((len(writes) + 1) // 2):
        kills = {"s0": min(2 * cycle + 1, len(writes)), "s1": min(2 * cycle + 2, len(writes))}
        out = tmp_path / f"cycle{cycle}"
        where = f"cycle {cycle} (kills {kills})"

        def driver(out: Path = out, kills: dict[str, int] = kills) -> None:
            sweeps.run_sweep(
                sw, out, train_fn=DyingTrainer(kills), progress=False, log=lambda m: None, options=PARALLEL
            )

        assert in_killed_child(driver) == KILLED, f"{where}: the driver was not killed"
        said: list[str] = []
        rerun = sweeps.run_sweep(sw, out, progress=False, log=said.append, options=PARALLEL)
        assert rerun.ok, f"{where}: {rerun.failed}"
        for seed in (0, 1):
            rec = next(r for r in rerun.state["runs"] if r["name"] == f"s{seed}")
            assert rec["attempts"] <= 2, f"{where}: s{seed} was started {rec['attempts']} times"
            _check_like_reference(out / f"s{seed}", reference[seed][0], f"{where} s{seed}")
        assert all("started by an earlier sweep driver" not in m or "waiting for it" in m for m in said)


class DriverKiller:
    """A sweep worker's train function that SIGKILLs the sweep driver at run s0's ``at``-th write and goes on."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, cfg: Config, resume: Path | None, run_dir: Path) -> Path:
        if cfg.name == "s0":
            from mtlkit import io

            driver, original, count = os.getppid(), io._atomic, {"n": 0}

            def counting(path, write) -> None:
                original(path, write)
                if Path(run_dir).resolve() in Path(path).resolve().parents:
                    count["n"] += 1
                    if count["n"] == self.at and os.getppid() == driver:
                        os.kill(driver, signal.SIGKILL)

            io._atomic = counting
        return default_train()(cfg, resume, run_dir)


@pytest.mark.slow
def test_rerun_waits_for_the_orphaned_workers_of_a_killed_driver(reference, scenes_cache: Path, tmp_path: Path) -> None:
    """The driver dies after s0's first checkpoint; both workers go on. The sweep run again at once
    starts no second worker on their runs: it waits for them, and each run is trained once, by its
    first worker, to the records of the uninterrupted reference."""
    out = tmp_path / "orphans"
    sw = _sweep(scenes_cache)

    def driver() -> None:
        sweeps.run_sweep(sw, out, train_fn=DriverKiller(at=2), progress=False, log=lambda m: None, options=PARALLEL)

    assert in_killed_child(driver) == KILLED
    said: list[str] = []
    rerun = sweeps.run_sweep(sw, out, progress=False, log=said.append, options=PARALLEL)
    assert rerun.ok, rerun.failed
    waited = [m for m in said if "waiting for it instead of starting a second worker" in m]
    assert any(m.startswith("[s0]") for m in waited), said
    for seed in (0, 1):
        rec = next(r for r in rerun.state["runs"] if r["name"] == f"s{seed}")
        if any(m.startswith(f"[s{seed}]") for m in waited):
            assert rec["attempts"] == 1 and rec["last_action"] == "skipped", rec
        _check_like_reference(out / f"s{seed}", reference[seed][0], f"s{seed}")
