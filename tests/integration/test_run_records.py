"""A run folder is never overwritten, never trained by two processes, and always describes what ran.

Written from issue 22's "data loss and records that lie": ``--run-dir`` of a run, a second trainer
of a run in training, a resume under an edited config.yaml, a checkpoint damaged on disk; and
issue 25's file modes (the atomic writer respects the umask as a plain ``open`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import mtlkit
from helpers.killpoints import epochs_of
from helpers.runs import tiny_config, train_until_killed
from mtlkit.cli.main import main
from mtlkit.config import Config, save_config
from mtlkit.errors import ConfigError, OutputError, TrainingError
from mtlkit.io import atomic_torch_save, atomic_write_json, atomic_write_text
from mtlkit.train import step as step_module
from mtlkit.train.fit import fit
from mtlkit.train.trainer import build, load_run, train


def _cfg(cache: Path, out: Path, epochs: int = 2) -> Config:
    return tiny_config(cache, out, train={"epochs": epochs, "batch_size": 4}, dataset={"n_train": 8, "n_val": 4})


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run folder: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*")) if p.is_file()
    }


def _env() -> dict[str, str]:
    src = str(Path(mtlkit.__file__).resolve().parents[1])
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mtlkit: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def finished(scenes_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run (tests work on copies)."""
    out = tmp_path_factory.mktemp("finished")
    return train(_cfg(scenes_cache, out), run_dir=out / "run")


@pytest.fixture(scope="module")
def interrupted(scenes_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run killed in its second epoch (1 epoch checkpointed; tests work on copies)."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as mp:
        train_until_killed(_cfg(scenes_cache, out), out / "run", mp, at_step=2 + 1)  # 2 steps per epoch
    return out / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def _edit(run: Path, key: str, value) -> None:
    data = yaml.safe_load((run / "config.yaml").read_text())
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


# ----------------------------------------------------------------------------- --run-dir of a run


def test_run_dir_of_a_finished_run_is_refused_and_nothing_replaced(finished: Path, tmp_path: Path) -> None:
    """The README's own-data command run twice: the second is one line naming the folder, the folder unchanged."""
    run = _copy(finished, tmp_path)
    config = tmp_path / "cfg.yaml"
    cfg_text = (run / "config.yaml").read_text()
    config.write_text(cfg_text)
    before = _snapshot(run)
    proc = subprocess.run(
        [sys.executable, "-m", "mtlkit", "train", str(config), "--run-dir", str(run)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line_error(proc.stderr)
    assert str(run) in line and "finished" in line
    assert _snapshot(run) == before


def test_run_dir_of_an_interrupted_run_is_refused_naming_resume(
    interrupted: Path, scenes_cache: Path, tmp_path: Path
) -> None:
    run = _copy(interrupted, tmp_path)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="--resume") as err:
        train(_cfg(scenes_cache, tmp_path), run_dir=run)
    assert str(run) in str(err.value)
    assert _snapshot(run) == before


def test_run_dir_with_another_runs_config_is_refused(interrupted: Path, scenes_cache: Path, tmp_path: Path) -> None:
    """A folder holding only a config.yaml (killed before its first epoch ended) of a different config."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(_cfg(scenes_cache, tmp_path, epochs=5), run / "config.yaml")
    with pytest.raises(ConfigError, match="another run's config.yaml"):
        train(_cfg(scenes_cache, tmp_path), run_dir=run)


def test_fit_into_a_finished_run_is_refused(scenes_cache: Path, tmp_path: Path) -> None:
    setup = build(_cfg(scenes_cache, tmp_path))
    train_ds, val_ds = setup.builder.dataset("train", train=True), setup.builder.dataset("val", train=False)
    run = fit(setup.model, setup.tasks, train_ds, val_ds, epochs=1, batch_size=4, run_dir=tmp_path / "fit")
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="finished run"):
        fit(setup.model, setup.tasks, train_ds, val_ds, epochs=1, batch_size=4, run_dir=run)
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- one trainer per run


def test_a_run_in_training_refuses_a_second_trainer(
    interrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While ``--resume RUN`` trains, a second ``--resume RUN`` (another process) is a one-line refusal."""
    run = _copy(interrupted, tmp_path)
    seen: dict[str, subprocess.CompletedProcess] = {}
    original = step_module.StepRunner.__call__

    def step_and_try_a_second_trainer(self, batch):
        if not seen:
            seen["proc"] = subprocess.run(
                [sys.executable, "-m", "mtlkit", "train", "--resume", str(run)],
                env=_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
        return original(self, batch)

    monkeypatch.setattr(step_module.StepRunner, "__call__", step_and_try_a_second_trainer)
    assert train(resume=run) == run
    proc = seen["proc"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line_error(proc.stderr)
    assert str(run) in line and f"process {os.getpid()}" in line
    assert [r["epoch"] for r in epochs_of(run)] == [1, 2]


def test_a_lock_held_on_another_host_refuses_and_its_holders_death_frees_it(interrupted: Path, tmp_path: Path) -> None:
    """The refusal names the holder the lock file names; once the holder is killed (kill -9) the
    kernel has dropped the flock and the folder resumes at once, no stale lock to delete by hand."""
    run = _copy(interrupted, tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; "
            f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242 elsewhere'); "
            "print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match="being trained by process 4242 on elsewhere"):
            train(resume=run)
    finally:
        holder.kill()
        holder.wait()
    assert train(resume=run) == run


# ----------------------------------------------------------------------------- resume with an edited config


@pytest.mark.parametrize(
    ("key", "value"), [("optim.lr", 0.01), ("seed", 5), ("dataset.n_train", 12), ("weighting.grad_path", "batched")]
)
def test_resume_refuses_an_edited_result_affecting_key(interrupted: Path, tmp_path: Path, key: str, value) -> None:
    run = _copy(interrupted, tmp_path)
    _edit(run, key, value)
    before = _snapshot(run)
    with pytest.raises(ConfigError) as err:
        train(resume=run)
    msg = str(err.value)
    assert key in msg and "new run" in msg and "\n" not in msg
    assert _snapshot(run) == before


def test_resume_applies_more_epochs_and_records_the_change(interrupted: Path, tmp_path: Path) -> None:
    run = _copy(interrupted, tmp_path)
    _edit(run, "train.epochs", 3)
    train(resume=run)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs"] == 3
    assert results["config_changes"] == [{"key": "train.epochs", "from": 2, "to": 3, "epoch": 2}]
    assert [r["epoch"] for r in epochs_of(run)] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3


def test_resume_refuses_fewer_epochs_than_done(finished: Path, tmp_path: Path) -> None:
    """Killed after its last epoch's checkpoint (2 epochs done, no results.json yet), config.yaml says 1."""
    run = _copy(finished, tmp_path)
    (run / "results.json").unlink()
    _edit(run, "train.epochs", 1)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="train.epochs 1 is fewer than the 2 epochs"):
        train(resume=run)
    assert _snapshot(run) == before


def test_resume_takes_edits_that_cannot_change_results(interrupted: Path, tmp_path: Path) -> None:
    run = _copy(interrupted, tmp_path)
    _edit(run, "train.device", "cpu")
    train(resume=run)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished" and "config_changes" not in results


def test_resume_of_a_finished_run_with_an_edited_config_is_refused(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    _edit(run, "train.epochs", 4)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="never trained again"):
        train(resume=run)
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- silent corruption


def _zero_inside_largest_tensor(path: Path, n: int = 4096) -> str:
    """Overwrite ``n`` bytes with zeros in the middle of the checkpoint's largest tensor storage; its name."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.file_size >= 2 * n, "no tensor large enough to damage"
    raw = bytearray(path.read_bytes())
    header = info.header_offset
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    start = header + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    assert any(raw[start : start + n]), "the bytes were zero already"
    raw[start : start + n] = bytes(n)
    path.write_bytes(bytes(raw))
    return info.filename


def test_a_checkpoint_damaged_inside_a_tensor_is_refused(finished: Path, interrupted: Path, tmp_path: Path) -> None:
    done = _copy(finished, tmp_path / "done")
    best = done / "checkpoints" / "best.pt"
    _zero_inside_largest_tensor(best)
    torch.load(best, weights_only=True)  # torch itself loads it: the damage would go unnoticed
    with pytest.raises(TrainingError, match=f"{best}: corrupt checkpoint"):
        load_run(done)

    run = _copy(interrupted, tmp_path / "resume")
    last = run / "checkpoints" / "last.pt"
    _zero_inside_largest_tensor(last)
    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "last.pt")
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write_text(kept, "new")
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask
    for name in ("results.json", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain, name
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new"
