"""Run folders: claimed atomically, so runs started together never share one."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from mtlkit.report.runs import read_run
from mtlkit.train.rundir import claim_run_dir, write_history

RACERS = 6
STAMP = "20260101-000000"


def _claim(out: str, barrier, results) -> None:
    """One racer (a forked process): wait for all, then claim with a slow ``mkdir``."""
    real_mkdir = Path.mkdir

    def slow_mkdir(self: Path, *args, **kwargs) -> None:
        time.sleep(0.2)  # a slow file system: any check-then-create gap lets every racer through
        real_mkdir(self, *args, **kwargs)

    Path.mkdir = slow_mkdir  # only in this child process
    barrier.wait()  # every process leaves the barrier together and claims at once
    results.put(str(claim_run_dir(out, "race", stamp=STAMP)))


def test_processes_racing_for_one_name_get_distinct_folders(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), barrier, results)) for _ in range(RACERS)]
    for p in procs:
        p.start()
    claimed = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(claimed)) == RACERS
    base = tmp_path / f"race-{STAMP}"
    expected = {str(base)} | {f"{base}-{i}" for i in range(1, RACERS)}
    assert set(claimed) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(c).name for c in claimed)


def test_claim_skips_taken_names_and_files(tmp_path: Path) -> None:
    (tmp_path / f"r-{STAMP}").mkdir()
    (tmp_path / f"r-{STAMP}-1").write_text("a file in the way")
    path = claim_run_dir(tmp_path / "new", "r", stamp=STAMP)
    assert path == tmp_path / "new" / f"r-{STAMP}" and path.is_dir()
    assert claim_run_dir(tmp_path, "r", stamp=STAMP) == tmp_path / f"r-{STAMP}-2"


def _strict(line: str) -> dict:
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} written"))


def test_history_is_strict_json_and_flags_non_finite_values(tmp_path: Path) -> None:
    record = {
        "epoch": 1,
        "train": {"loss/depth": 0.5},
        "val": {"loss/depth": float("inf")},
        "weights": {"depth": float("nan")},
    }
    write_history(tmp_path, [record])
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    written = _strict(line)
    assert written["val"] == {"loss/depth": None} and written["weights"] == {"depth": None}
    assert written["non_finite"] == ["val.loss/depth", "weights.depth"]
    assert written["train"] == {"loss/depth": 0.5}
    # a report marks the run, also for logs of older versions that wrote bare Infinity
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text('{"epoch": 1, "val": {"loss/depth": Infinity}}\n')
    assert read_run(tmp_path).non_finite == ["epoch 1: val.loss/depth", "epoch 1: weights.depth"]
    assert read_run(tmp_path / "old").non_finite == ["epoch 1: val.loss/depth"]
