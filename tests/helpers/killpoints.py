"""Deterministic kills at the atomic writes of a run (the kill-point tests' fault injection).

Every record a run writes goes through :func:`mtlkit.io._atomic` (write a temp file, rename it
over the target). :func:`die_at_write` wraps it so the process is SIGKILLed at the n-th write into a
run folder: ``during`` (the temp file written, not yet renamed: what a kill in the middle of a
write leaves) or ``after`` (the file replaced, the next one not begun). SIGKILL, as from ``kill -9``:
no ``finally``, no ``atexit``, the kernel drops the process's locks.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtlkit import io
from mtlkit.train.checkpoint import load_checkpoint

MODES = ("during", "after")


def _inside(path: str | Path, run_dir: Path) -> str | None:
    """``path`` relative to ``run_dir`` when it lies inside it, else None."""
    p, root = Path(path).resolve(), run_dir.resolve()
    return str(p.relative_to(root)) if root in p.parents else None


def record_writes(run_dir: Path, into: list[str]) -> Callable[[], None]:
    """Log (relative path) every atomic write into ``run_dir``; returns the function that undoes it."""
    original = io._atomic

    def logged(path, write) -> None:
        rel = _inside(path, run_dir)
        if rel is not None:
            into.append(rel)
        original(path, write)

    io._atomic = logged
    return lambda: setattr(io, "_atomic", original)


def kill_me() -> None:
    """SIGKILL this process (kill -9)."""
    os.kill(os.getpid(), signal.SIGKILL)


def die_at_write(run_dir: Path, index: int, mode: str, first: Callable[[], None] | None = None) -> None:
    """SIGKILL this process at its ``index``-th (1-based) atomic write into ``run_dir``, ``during`` or ``after`` it.

    ``first`` runs just before the kill (the sweep tests kill the sweep driver there).
    """
    assert mode in MODES
    original = io._atomic
    count = {"n": 0}

    def die() -> None:
        if first is not None:
            first()
        kill_me()

    def dying(path, write) -> None:
        if _inside(path, run_dir) is None:
            return original(path, write)
        count["n"] += 1
        if count["n"] != index:
            return original(path, write)
        if mode == "during":

            def half(fh) -> None:
                write(fh)
                fh.flush()
                die()

            return original(path, half)
        original(path, write)
        die()
        return None

    io._atomic = dying


def in_killed_child(fn: Callable[[], Any]) -> int:
    """Run ``fn`` in a forked copy of this process and return its exit code (-9: it was killed).

    A child that returns or raises exits with 1 (the test then knows the kill point was not reached).
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        try:
            fn()
        except BaseException:  # noqa: BLE001 - shown on stderr, the exit code tells the parent
            traceback.print_exc()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def temp_files(run_dir: Path) -> list[Path]:
    """Temp files of interrupted atomic writes in a run folder."""
    return sorted(p for d in (run_dir, run_dir / "checkpoints") for p in d.glob(".*.tmp"))


def epochs_of(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields (which differ between any two runs)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "epoch_time")} for line in lines]


def outcome(run_dir: Path) -> dict[str, Any]:
    """What a finished run's records say: epochs, results' numbers, and which epoch each checkpoint holds."""
    res = json.loads((run_dir / "results.json").read_text())
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return {
        "epochs": epochs_of(run_dir),
        "status": res["status"],
        "final": res["final"],
        "best": res["best"],
        "best_epoch": res["best_epoch"],
        "n_epochs": res["epochs"],
        "best_pt_epoch": best["epoch"],
        "last_pt_epoch": last["epoch"],
        "config_changes": res.get("config_changes"),
    }


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical model weights."""
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
