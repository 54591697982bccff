"""Every bad input a user can give is one line ``mtlkit: error: ...`` naming the file and the problem.

One table: each row makes an input (config, data, checkpoint, run folder, output path, report
input, CLI argument), runs one command, and states the exit code and a fragment of the message.
The test asserts that, no traceback, and which run folder is left behind: none when the input
can be checked before training, else one whose results.json records the failure and its reason.
The command runs in-process (``mtlkit.cli.main.main``); rows marked ``subprocess`` run
``python -m mtlkit`` to see everything a user's terminal would. The race of runs started
together is in tests/train/test_rundir.py (it needs several processes).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers.runs import tiny_config
from mtlkit import io as mtlkit_io
from mtlkit.cli.main import main
from mtlkit.metrics.depth import DepthMeter
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.trainer import train

# --------------------------------------------------------------------------- the inputs


@dataclass
class Env:
    """What a row may use: a scratch folder, an output folder to watch, a finished run to copy."""

    tmp: Path
    cache: Path
    trained: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        """``out_dir`` of every config a row writes: where no run folder may be left behind."""
        return self.tmp / "runs"

    def config(self, *overrides: str, **sections) -> str:
        """A tiny scenes config (1 epoch, 2 steps) written to a YAML file, with sections replaced."""
        cfg = tiny_config(
            self.cache,
            self.out,
            train={"epochs": 1, "max_steps_per_epoch": 2},
            dataset={"n_train": 8, "n_val": 4, "options": {"progress": False}},
        ).to_dict()
        for key, value in sections.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    def run(self, finished: bool = True) -> Path:
        """A private copy of a finished 1-epoch run folder (unfinished: one epoch of two, as if killed)."""
        path = self.tmp / "run"
        shutil.copytree(self.trained, path)
        if not finished:
            (path / "results.json").unlink()
            self.edit_run_config(path, "train", "epochs", 2)
        return path

    def edit_run_config(self, run: Path, section: str, key: str, value) -> None:
        data = yaml.safe_load((run / "config.yaml").read_text())
        data[section][key] = value
        (run / "config.yaml").write_text(yaml.safe_dump(data))

    def npy_data(self, n: dict[str, int] | None = None) -> Path:
        """A valid NYUv2-layout folder of 32x32 samples (``n``: samples per folder of train)."""
        root = self.tmp / "data"
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            for folder in ("image", "label", "depth", "normal"):
                count = (n or {}).get(folder, 2) if split == "train" else 2
                (root / split / folder).mkdir(parents=True)
                for i in range(count):
                    if folder == "image":
                        arr = rng.random((32, 32, 3), dtype=np.float32)
                    elif folder == "label":
                        arr = rng.integers(-1, 13, (32, 32)).astype(np.int64)
                    elif folder == "depth":
                        arr = rng.random((32, 32, 1), dtype=np.float32) + 0.5
                    else:
                        arr = np.zeros((32, 32, 3), np.float32)
                        arr[..., 2] = 1.0
                    np.save(root / split / folder / f"{i}.npy", arr)
        return root

    def nyuv2_config(self, root: Path) -> str:
        return self.config(
            dataset={
                "name": "nyuv2",
                "root": str(root),
                "num_classes": None,
                "height": None,
                "width": None,
                "n_train": None,
                "n_val": None,
                "options": {},
            }
        )


@dataclass
class Case:
    """One bad input: how to make it (returns the command's arguments), what the user must see."""

    id: str
    make: Callable[[Env], list[str]]
    code: int
    fragment: str
    #: None: no run folder may be left under env.out; "failed": exactly one, with status failed
    left: str | None = None
    check: Callable[[Env], None] | None = None
    subprocess: bool = False
    slow: bool = False


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _disk_full_for(suffix: str, env: Env) -> None:
    """Every write to a file ending in ``suffix`` fails as on a full disk (ENOSPC)."""
    original = mtlkit_io._Sink.write  # noqa: SLF001 - the one place atomic writes go through

    def write(self, data):
        if self.path.name.endswith(suffix):
            self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise self.error
        return original(self, data)

    env.monkeypatch.setattr(mtlkit_io._Sink, "write", write)  # noqa: SLF001


def _read_only(env: Env) -> None:
    """Creating anything under env.out fails as on a read-only file system (EROFS)."""
    original = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(env.out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return original(self, *args, **kwargs)

    env.monkeypatch.setattr(Path, "mkdir", mkdir)


def _depth_diverges_at(epoch: int, env: Env) -> None:
    """The depth metric turns infinite from the ``epoch``-th validation on."""
    calls = {"n": 0}
    original = DepthMeter.compute

    def compute(self):
        calls["n"] += 1
        out = original(self)
        return {k: float("inf") for k in out} if calls["n"] >= epoch else out

    env.monkeypatch.setattr(DepthMeter, "compute", compute)


def _last_checkpoint_is_epoch(epoch: int) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        run = next(p for p in [env.tmp / "run", *env.out.glob("*")] if p.is_dir())
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == epoch

    return check


def _strict_json_log(env: Env) -> None:
    """metrics.jsonl of the left run is strict JSON (no bare NaN/Infinity) and ends before the bad epoch."""
    run = next(env.out.iterdir())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
    assert len(lines) == 1
    _last_checkpoint_is_epoch(1)(env)


def _report_shows_failure(env: Env) -> None:
    assert "non-finite value for task depth" in (env.tmp / "report" / "report.md").read_text()


def _failed_run(env: Env) -> Path:
    """A run folder as the trainer leaves it after a failure in epoch 2 (depth diverged)."""
    run = env.tmp / "failed"
    shutil.copytree(env.trained, run)
    results = {
        "name": "tiny",
        "arch": "mtan",
        "weighting": "equal",
        "dataset": "scenes",
        "status": "failed",
        "error": "epoch 2 validation: non-finite value for task depth (loss/depth=inf)",
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def _text_npy(env: Env) -> Path:
    root = env.npy_data()
    _write(root / "train" / "image" / "0.npy", "0.1 0.2 0.3\n")
    return root


def _label_out_of_range(env: Env) -> Path:
    root = env.npy_data()
    np.save(root / "train" / "label" / "0.npy", np.full((32, 32), 40, np.int64))
    return root


def _nan_depth_in_sample_1(env: Env) -> Path:
    root = env.npy_data()
    np.save(root / "train" / "depth" / "1.npy", np.full((32, 32, 1), np.nan, np.float32))
    return root


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


class _RunsCode:
    """A checkpoint that runs code when unpickled without ``weights_only`` (it must be refused)."""

    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def _resume(run: Path) -> list[str]:
    return ["train", "--resume", str(run)]


def _evaluate(run: Path, *more: str) -> list[str]:
    return ["evaluate", str(run), "--device", "cpu", *more]


def _report(env: Env, *paths: Path) -> list[str]:
    return ["report", *map(str, paths), "--out", str(env.tmp / "report"), "--no-models"]


def _resume_arch_edited(env: Env) -> list[str]:
    run = env.run(finished=False)
    env.edit_run_config(run, "model", "arch", "cross_stitch")
    return _resume(run)


def _evaluate_arch_edited(env: Env) -> list[str]:
    run = env.run()
    env.edit_run_config(run, "model", "arch", "split_wide")
    return _evaluate(run)


def _resume_weighting_edited(env: Env) -> list[str]:
    run = env.run(finished=False)
    env.edit_run_config(run, "weighting", "name", "dwa")
    return _resume(run)


def _evaluate_width_edited(env: Env) -> list[str]:
    run = env.run()
    env.edit_run_config(run, "model", "width", 0.25)
    return _evaluate(run)


def _old_checkpoint_misfit(env: Env) -> list[str]:
    """A checkpoint from before metadata was stored, under a config edited to another architecture."""
    run = env.run()
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    del state["meta"]
    torch.save(state, run / "checkpoints" / "best.pt")
    env.edit_run_config(run, "model", "arch", "split_wide")
    return _evaluate(run)


def _replace_last(env: Env, obj) -> list[str]:
    run = env.run(finished=False)
    _save(run / "checkpoints" / "last.pt", obj)
    return _resume(run)


def _best_as_last(env: Env) -> list[str]:
    run = env.run(finished=False)
    shutil.copy(run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt")
    return _resume(run)


def _random_bytes_last(env: Env) -> list[str]:
    run = env.run(finished=False)
    (run / "checkpoints" / "last.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return _resume(run)


def _code_in_best(env: Env) -> list[str]:
    run = env.run()
    torch.save({"model": _RunsCode()}, run / "checkpoints" / "best.pt")
    return _evaluate(run)


def _best_missing(env: Env) -> list[str]:
    run = env.run()
    (run / "checkpoints" / "best.pt").unlink()
    return _evaluate(run)


def _disk_full_on_resume(env: Env) -> list[str]:
    run = env.run(finished=False)
    _disk_full_for(".pt", env)
    return _resume(run)


def _report_results_list(env: Env) -> list[str]:
    run = env.run()
    (run / "results.json").write_text("[1, 2]")
    return _report(env, run)


def _report_broken_line(env: Env, last: bool) -> list[str]:
    run = env.run()
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(good + '{"epoch": 2, "tra' if last else '{"epoch": 0, "tra\n' + good)
    return _report(env, run)


CASES = [
    # ---- config files and keys
    Case("config-missing", lambda e: ["train", str(e.tmp / "missing.yaml")], 2, "missing.yaml: config file not found"),
    Case("config-is-a-folder", lambda e: ["train", str(e.tmp)], 2, "is a folder, not a config file"),
    Case(
        "config-empty",
        lambda e: ["train", str(_write(e.tmp / "empty.yaml", "# nothing\n"))],
        2,
        "empty.yaml: empty config file; it would train every default for 200 epochs",
    ),
    Case(
        "config-invalid-yaml", lambda e: ["train", str(_write(e.tmp / "bad.yaml", "train: [1,\n"))], 2, "bad.yaml: line"
    ),
    Case(
        "config-not-a-mapping",
        lambda e: ["train", str(_write(e.tmp / "list.yaml", "- 1\n- 2\n"))],
        2,
        "top level must be a mapping",
    ),
    Case("config-unknown-key", lambda e: ["train", e.config(), "train.epoch=3"], 2, "train.epoch: unknown key"),
    Case("config-wrong-type", lambda e: ["train", e.config(), "train.epochs=many"], 2, "train.epochs:"),
    Case(
        "config-boolean-for-number",
        lambda e: ["train", e.config(), "train.batch_size=true"],
        2,
        "train.batch_size: expected a number, got a boolean",
    ),
    Case("config-out-of-range", lambda e: ["train", e.config(), "optim.lr=-1"], 2, "optim.lr: Input should be"),
    Case(
        "override-without-equals",
        lambda e: ["train", e.config(), "train.epochs"],
        2,
        "'train.epochs' is not of the form key=value",
    ),
    Case("override-into-a-value", lambda e: ["train", e.config(), "seed.x=1"], 2, "'seed' is a value, not a section"),
    Case("unknown-architecture", lambda e: ["train", e.config(), "model.arch=nope"], 2, "unknown architecture 'nope'"),
    Case(
        "unknown-weighting",
        lambda e: ["train", e.config(), "weighting.name=nope"],
        2,
        "unknown weighting method 'nope'",
    ),
    Case(
        "unknown-weighting-option",
        lambda e: ["train", e.config(), "weighting.name=dwa", "weighting.options.x=1"],
        2,
        "weighting.options for 'dwa'",
    ),
    Case(
        "unknown-dataset-option",
        lambda e: ["train", e.config(), "dataset.options.zoom=2"],
        2,
        "dataset.options.zoom: unknown option",
    ),
    Case(
        "unknown-task",
        lambda e: ["train", e.config(), "dataset.tasks=[depth,edges]"],
        2,
        "dataset.tasks: edges not provided",
    ),
    Case("not-a-device", lambda e: ["train", e.config(), "train.device=toaster"], 2, "train.device: 'toaster'"),
    Case(
        "image-size-not-multiple-of-32",
        lambda e: ["train", e.config(), "dataset.height=40"],
        2,
        "H and W multiples of 32",
    ),
    Case(
        "weighting-mode-the-arch-lacks",
        lambda e: ["train", e.config(), "model.arch=single", "weighting.name=mgda", "weighting.mode=representation"],
        2,
        "architecture SingleTask has no shared representation",
    ),
    # ---- CLI arguments
    Case("train-without-config", lambda e: ["train"], 2, "train needs CONFIG.yaml"),
    Case(
        "resume-with-config",
        lambda e: ["train", e.config(), "--resume", str(e.tmp)],
        2,
        "--resume continues a run with its saved config",
    ),
    Case(
        "resume-not-a-run-folder",
        lambda e: ["train", "--resume", str(e.tmp / "nowhere")],
        2,
        "not a run folder (no config.yaml)",
    ),
    Case("evaluate-not-a-run-folder", lambda e: _evaluate(e.tmp / "nowhere"), 2, "not a run folder"),
    Case("evaluate-unknown-split", lambda e: _evaluate(e.run(), "--split", "test"), 2, "--split 'test'"),
    Case(
        "params-one-class",
        lambda e: ["params", "--dataset", "nyuv2", "--arch", "mtan", "--num-classes", "1"],
        2,
        "dataset.num_classes: Input should be greater than or equal to 2 (got 1)",
        subprocess=True,
    ),
    Case(
        "params-unknown-arch",
        lambda e: ["params", "--dataset", "nyuv2", "--arch", "nope"],
        2,
        "unknown architecture 'nope'",
    ),
    Case(
        "params-classes-nyuv2-lacks",
        lambda e: ["params", "--dataset", "nyuv2", "--arch", "mtan", "--num-classes", "7"],
        2,
        "nyuv2 has 13 classes",
    ),
    Case(
        "decathlon-score-partial",
        lambda e: ["decathlon-score", "--acc", "imagenet12=60", "aircraft=55"],
        0,
        "the total covers 2 of 10 domains",
    ),
    Case(
        "decathlon-score-not-a-number",
        lambda e: ["decathlon-score", "--acc", "aircraft=high"],
        2,
        "'high' is not a number",
    ),
    Case(
        "decathlon-score-unknown-domain",
        lambda e: ["decathlon-score", "--acc", "mnist=99"],
        2,
        "no baseline accuracy for domain 'mnist'",
    ),
    Case(
        "decathlon-score-accuracy-range",
        lambda e: ["decathlon-score", "--acc", "aircraft=120"],
        2,
        "not an accuracy in percent",
    ),
    Case(
        "decathlon-score-json-missing",
        lambda e: ["decathlon-score", "--json", str(e.tmp / "no.json")],
        2,
        "no.json: file not found",
    ),
    # ---- data
    Case(
        "dataset-root-missing",
        lambda e: ["train", e.nyuv2_config(e.tmp / "nowhere")],
        2,
        "nowhere: dataset folder not found",
    ),
    Case(
        "task-folders-disagree",
        lambda e: ["train", e.nyuv2_config(e.npy_data({"image": 3, "label": 4, "depth": 4, "normal": 4}))],
        2,
        "train/image/3.npy: missing file",
    ),
    Case(
        "task-folder-missing",
        lambda e: ["train", e.nyuv2_config(shutil.rmtree(e.npy_data() / "val" / "depth") or e.tmp / "data")],
        2,
        "val/depth: folder not found (needed for task 'depth')",
    ),
    Case(
        "gap-in-numbering",
        lambda e: ["train", e.nyuv2_config(e.npy_data({"image": 1}))],
        2,
        "train/image/1.npy: missing file",
    ),
    Case(
        "odd-file-name",
        lambda e: ["train", e.nyuv2_config(_write(e.npy_data() / "val" / "label" / "x.npy", b"").parents[2])],
        2,
        "x.npy: unexpected file name",
    ),
    Case(
        "text-file-as-npy",
        lambda e: ["train", e.nyuv2_config(_text_npy(e))],
        2,
        "image/0.npy: not a .npy file (a text file",
    ),
    Case(
        "label-out-of-range",
        lambda e: ["train", e.nyuv2_config(_label_out_of_range(e))],
        2,
        "label/0.npy: label values 40 out of range, expected 0..12 or -1",
    ),
    Case(
        "nan-in-a-later-sample",
        lambda e: ["train", e.nyuv2_config(_nan_depth_in_sample_1(e))],
        2,
        "train/depth/1.npy: depth has 1024 NaN/inf value(s)",
        left="failed",
    ),
    Case(
        "data-check-finds-disagreeing-folders",
        lambda e: ["data", "check", "nyuv2", str(e.npy_data({"label": 3})), "--quiet"],
        1,
        "train/image/2.npy: missing file",
    ),
    Case(
        "data-check-text-file-as-npy",
        lambda e: ["data", "check", "nyuv2", str(_text_npy(e)), "--quiet"],
        1,
        "not a .npy file (a text file",
    ),
    Case("data-check-unknown-dataset", lambda e: ["data", "check", "mnist", str(e.tmp)], 2, "unknown dataset 'mnist'"),
    # ---- checkpoints
    Case(
        "evaluate-best-missing",
        _best_missing,
        2,
        "best.pt: not found (the run saved no best checkpoint); use --checkpoint last",
    ),
    Case(
        "resume-config-edited-arch",
        _resume_arch_edited,
        2,
        "last.pt is for model.arch mtan, config says cross_stitch: put the run's config.yaml back",
    ),
    Case("evaluate-config-edited-arch", _evaluate_arch_edited, 2, "is for model.arch mtan, config says split_wide"),
    Case("resume-config-edited-weighting", _resume_weighting_edited, 2, "is for weighting.name equal, config says dwa"),
    Case("evaluate-config-edited-width", _evaluate_width_edited, 2, "is for model.width 0.125, config says 0.25"),
    Case(
        "checkpoint-without-metadata-misfit",
        _old_checkpoint_misfit,
        2,
        "best.pt: does not fit this run's model (RuntimeError: ",
    ),
    Case("checkpoint-empty-dict", lambda e: _replace_last(e, {}), 2, "last.pt: not an mtlkit checkpoint (no 'model')"),
    Case(
        "checkpoint-a-tensor",
        lambda e: _replace_last(e, torch.zeros(3)),
        2,
        "last.pt: holds a Tensor, not an mtlkit checkpoint",
    ),
    Case("checkpoint-best-as-last", _best_as_last, 2, "last.pt: cannot resume from it, it lacks weighting"),
    Case("checkpoint-random-bytes", _random_bytes_last, 2, "last.pt: not a PyTorch checkpoint"),
    Case("checkpoint-runs-code", _code_in_best, 2, "best.pt: refused, the checkpoint holds objects other than tensors"),
    # ---- output
    Case(
        "out-dir-under-a-file",
        lambda e: ["train", e.config(), f"out_dir={_write(e.tmp / 'afile', 'x')}/runs"],
        2,
        "afile: is a file, not a folder",
    ),
    Case("out-dir-read-only", lambda e: _read_only(e) or ["train", e.config()], 2, "runs: cannot write (Read-only"),
    Case(
        "disk-full-keeps-last-checkpoint",
        _disk_full_on_resume,
        2,
        "last.pt: cannot write (No space left on device)",
        check=_last_checkpoint_is_epoch(1),
    ),
    # ---- diverging runs
    Case(
        "non-finite-validation",
        lambda e: _depth_diverges_at(2, e) or ["train", e.config(), "train.epochs=2"],
        2,
        "epoch 2 validation: non-finite value for task depth",
        left="failed",
        check=_strict_json_log,
    ),
    # ---- report inputs
    Case("report-nothing-there", lambda e: _report(e, e.tmp / "nowhere"), 2, "no such run or sweep folder"),
    Case("report-no-runs", lambda e: _report(e, e.tmp), 2, "holds no run folder"),
    Case("report-results-a-list", _report_results_list, 2, "results.json: expected a JSON object"),
    Case(
        "report-results-invalid",
        lambda e: _report(e, _write(e.run() / "results.json", "{").parent),
        2,
        "results.json: invalid JSON",
    ),
    Case(
        "report-metrics-broken-line",
        lambda e: _report_broken_line(e, last=False),
        2,
        "metrics.jsonl: line 1 is not valid JSON",
    ),
    Case("report-metrics-truncated-last-line", lambda e: _report_broken_line(e, last=True), 0, "mtlkit: warning: "),
    Case(
        "report-shows-why-a-run-failed", lambda e: _report(e, _failed_run(e)), 0, "report:", check=_report_shows_failure
    ),
]


# --------------------------------------------------------------------------- files that must not take the
# machine, paths that leave out_dir, silent wrong input, reports as inputs


def _alias_bomb(levels: int = 10) -> str:
    """A ~1 KB YAML whose anchors expand to 9**levels strings ("billion laughs")."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _folder_data(
    env: Env,
    tasks_yaml: str | bytes = "tasks:\n  - {name: seg, kind: segmentation, channels: 3}\n",
    seg: np.ndarray | None = None,
) -> Path:
    """A folder dataset of 32x32 PNGs (2 train, 1 val) with one 3-class task 'seg' (``seg``: train/seg/0.npy)."""
    root = env.tmp / "folder"
    _write(root / "tasks.yaml", tasks_yaml)
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "seg").mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / "images" / f"{i}.png")
            Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8)).save(root / split / "seg" / f"{i}.png")
    if seg is not None:
        (root / "train" / "seg" / "0.png").unlink()
        np.save(root / "train" / "seg" / "0.npy", seg)
    return root


def _folder_config(env: Env, root: Path) -> str:
    return env.config(
        dataset={
            "name": "folder",
            "root": str(root),
            "num_classes": None,
            "height": None,
            "width": None,
            "n_train": None,
            "n_val": None,
            "options": {},
        }
    )


def _nothing_outside(env: Env) -> None:
    """Nothing was made where the names would land: next to or above the scratch folder, or nested."""
    for where, pattern in ((env.tmp.parent, "escape*"), (env.tmp.parent, "abs*"), (env.tmp.parent.parent, "x")):
        assert not list(where.glob(pattern))
    assert not env.out.exists()


def _sweep_file(env: Env, name: str) -> list[str]:
    base = env.config()
    path = _write(
        env.tmp / "sweep.yaml", f"name: {json.dumps(name)}\nbase: {base}\nout_dir: {env.out}\ngrid: {{seed: [0, 1]}}\n"
    )
    return ["sweep", str(path), "--dry-run"]


def _report_edited(env: Env, file: str, edit: Callable[[dict], None]) -> list[str]:
    run = env.run()
    path = run / file
    if file == "metrics.jsonl":
        record = json.loads(path.read_text().splitlines()[0])
        edit(record)
        path.write_text(json.dumps(record) + "\n")
    elif file == "config.yaml":
        data = yaml.safe_load(path.read_text())
        edit(data)
        path.write_text(yaml.safe_dump(data))
    else:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return _report(env, run)


def _checkpoint_field(env: Env, key: str, value) -> list[str]:
    run = env.run(finished=False)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state[key] = value
    torch.save(state, run / "checkpoints" / "last.pt")
    return _resume(run)


def _data_check_reports(fragment: str) -> Callable[[Env], None]:
    """``mtlkit data check`` of the same folder reports the problem too (exit 1, one line naming it)."""

    def check(env: Env) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["data", "check", "folder", str(env.tmp / "folder"), "--quiet"])
        assert code == 1
        assert fragment in out.getvalue() + err.getvalue()

    return check


CASES += [
    # ---- a file must not take the machine
    Case(
        "config-alias-bomb",
        lambda e: ["train", str(_write(e.tmp / "bomb.yaml", _alias_bomb()))],
        2,
        "bomb.yaml: YAML expands to more than 100,000 values",
    ),
    Case(
        "tasks-yaml-alias-bomb",
        lambda e: [
            "train",
            _folder_config(
                e, _folder_data(e, "tasks:\n  - {name: seg, kind: segmentation, channels: 3}\n" + _alias_bomb())
            ),
        ],
        2,
        "tasks.yaml: YAML expands to more than 100,000 values",
    ),
    Case(
        "sweep-alias-bomb",
        lambda e: ["sweep", str(_write(e.tmp / "sweep.yaml", _alias_bomb())), "--dry-run"],
        2,
        "sweep.yaml: YAML expands to more than 100,000 values",
    ),
    Case(
        "override-long-value-shortened",
        lambda e: ["train", e.config(), "train.epochs=" + "many" * 5000],
        2,
        "train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'manymany",
    ),
    Case(
        "tasks-yaml-huge-channels",
        lambda e: [
            "train",
            _folder_config(
                e, _folder_data(e, "tasks:\n  - {name: seg, kind: segmentation, channels: 1099511627776}\n")
            ),
        ],
        2,
        "task 'seg': channels 1099511627776 is more than 100,000",
    ),
    Case(
        "huge-num-classes",
        lambda e: ["train", e.config(), "dataset.num_classes=1e9"],
        2,
        "dataset.num_classes: Input should be less than or equal to 100000",
    ),
    Case(
        "infinite-width",
        lambda e: ["train", e.config(), "model.width=1e309"],
        2,
        "model.width: Input should be a finite number (got inf)",
    ),
    Case(
        "huge-width",
        lambda e: ["train", e.config(), "model.width=1000"],
        2,
        "model.width: Input should be less than or equal to 16",
    ),
    # ---- one-line errors for values that can be checked before training
    Case("lr-infinite", lambda e: ["train", e.config(), "optim.lr=.inf"], 2, "optim.lr: Input should be a finite"),
    Case(
        "momentum-nan",
        lambda e: ["train", e.config(), "optim.momentum=nan"],
        2,
        "optim.momentum: Input should be a finite",
    ),
    Case(
        "weight-decay-infinite",
        lambda e: ["train", e.config(), "optim.weight_decay=1e999"],
        2,
        "optim.weight_decay: Input should be a finite",
    ),
    Case(
        "no-tasks",
        lambda e: ["train", e.config(), "dataset.tasks=[]"],
        2,
        "dataset.tasks: List should have at least 1 item",
    ),
    Case(
        "config-duplicate-key",
        lambda e: ["train", str(_write(e.tmp / "dup.yaml", "train:\n  epochs: 1\n  epochs: 300\n"))],
        2,
        "dup.yaml: line 3 invalid YAML (duplicate key 'epochs'",
    ),
    Case(
        "config-not-utf8",
        lambda e: ["train", str(_write(e.tmp / "latin1.yaml", "name: caf\xe9\n".encode("latin-1")))],
        2,
        "latin1.yaml: line 1: not UTF-8 text (byte 0xe9)",
    ),
    Case(
        "tasks-yaml-not-utf8",
        lambda e: [
            "train",
            _folder_config(
                e, _folder_data(e, "tasks:\n  - {name: caf\xe9, kind: segmentation, channels: 3}\n".encode("latin-1"))
            ),
        ],
        2,
        "tasks.yaml: line 2: not UTF-8 text",
    ),
    Case(
        "tasks-yaml-name-null",
        lambda e: [
            "train",
            _folder_config(e, _folder_data(e, "tasks:\n  - {name: null, kind: segmentation, channels: 3}\n")),
        ],
        2,
        "tasks[0]: name and kind must be strings (got name None",
    ),
    Case(
        "tasks-yaml-duplicate-key",
        lambda e: [
            "train",
            _folder_config(
                e, _folder_data(e, "tasks:\n  - {name: seg, kind: segmentation, channels: 3, channels: 4}\n")
            ),
        ],
        2,
        "tasks.yaml: line 2 invalid YAML (duplicate key 'channels'",
    ),
    Case(
        "resume-run-config-not-utf8",
        lambda e: _resume(_write(e.run(finished=False) / "config.yaml", b"name: \xff\n").parent),
        2,
        "config.yaml: line 1: not UTF-8 text (byte 0xff)",
    ),
    Case(
        "resume-checkpoint-epoch-a-string",
        lambda e: _checkpoint_field(e, "epoch", "one"),
        2,
        "last.pt: not a checkpoint mtlkit can resume (field 'epoch' is 'one', expected a count)",
    ),
    Case(
        "resume-checkpoint-best-a-list",
        lambda e: _checkpoint_field(e, "best", [1, 2]),
        2,
        "field 'best' is a list, expected a mapping",
    ),
    Case(
        "resume-checkpoint-history-a-number",
        lambda e: _checkpoint_field(e, "history", 5),
        2,
        "field 'history' is not a list of epoch records",
    ),
    # ---- paths: a run name is one folder name inside out_dir
    Case(
        "name-climbs-out",
        lambda e: ["train", e.config(), "name=../../escape"],
        2,
        "name: run name must be one plain folder name",
        check=_nothing_outside,
    ),
    Case(
        "name-absolute",
        lambda e: ["train", e.config(), f"name={e.tmp.parent}/abs"],
        2,
        "name: run name must be one plain folder name",
        check=_nothing_outside,
    ),
    Case(
        "name-nested",
        lambda e: ["train", e.config(), "name=a/b"],
        2,
        "name: run name must be one plain folder",
        check=_nothing_outside,
    ),
    Case("name-dot", lambda e: ["train", e.config(), "name=."], 2, "name: run name must not start with '.'"),
    Case(
        "sweep-name-climbs-out",
        lambda e: _sweep_file(e, "../../../x"),
        2,
        "sweep.yaml: name '../../../x' must be one plain folder name",
        check=_nothing_outside,
    ),
    # ---- silent wrong input
    Case(
        "float-class-id",
        lambda e: ["train", _folder_config(e, _folder_data(e, seg=np.full((32, 32), 1.5, np.float32)))],
        2,
        "0.npy: cannot be read as a segmentation target (class ids must be integers, got float32 value(s) such as 1.5",
        check=_data_check_reports("class ids must be integers"),
    ),
    Case(
        "task-named-image",
        lambda e: [
            "train",
            _folder_config(e, _folder_data(e, "tasks:\n  - {name: image, kind: segmentation, channels: 3}\n")),
        ],
        2,
        "task name 'image' must be a plain folder name other than 'images' and 'image'",
    ),
    # ---- reports are inputs too
    Case(
        "report-results-wrong-type",
        lambda e: _report_edited(e, "results.json", lambda d: d.update(final="high")),
        2,
        "results.json: not a results record (field 'final': expected dict[str, float], got 'high')",
    ),
    Case(
        "report-task-channels-wrong-type",
        lambda e: _report_edited(e, "results.json", lambda d: d["tasks"][0].update(channels="many")),
        2,
        "results.json: not a results record",
    ),
    Case(
        "report-metrics-wrong-type",
        lambda e: _report_edited(e, "metrics.jsonl", lambda d: d.update(epoch="1")),
        2,
        "metrics.jsonl: epoch record 1 is not a metrics record (field 'epoch': expected int, got '1')",
    ),
    Case(
        "report-metrics-value-wrong-type",
        lambda e: _report_edited(e, "metrics.jsonl", lambda d: d["val"].update({"depth/abs_err": "low"})),
        2,
        "field 'val': expected dict[str, float]",
    ),
    Case(
        "report-config-wrong-type",
        lambda e: _report_edited(e, "config.yaml", lambda d: d.update(seed="abc")),
        2,
        "config.yaml: seed: Input should be a valid integer",
    ),
    Case(
        "report-metrics-not-utf8",
        lambda e: _report(e, _write(e.run() / "metrics.jsonl", b'{"epoch": 1, "x": "\xff"}\n').parent),
        2,
        "metrics.jsonl: line 1: not UTF-8",
    ),
    Case(
        "report-out-is-a-file",
        lambda e: ["report", str(e.run()), "--out", str(_write(e.tmp / "afile", "x")), "--no-models"],
        2,
        "afile: is a file, not a folder",
    ),
]


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def trained(scenes_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch tiny run (every checkpoint row works on a copy)."""
    out = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(
        scenes_cache,
        out,
        train={"epochs": 1, "max_steps_per_epoch": 2},
        dataset={"n_train": 8, "n_val": 4, "options": {"progress": False}},
    )
    return train(cfg, run_dir=out / "run")


def _run(case: Case, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    if case.subprocess:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "mtlkit", *argv], capture_output=True, text=True, timeout=300, env=env
        )
        return proc.returncode, proc.stdout, proc.stderr
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_bad_input(
    case: Case,
    trained: Path,
    scenes_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    env = Env(tmp_path, scenes_cache, trained, monkeypatch)
    argv = case.make(env)
    code, out, err = _run(case, argv, capsys)
    monkeypatch.undo()
    assert code == case.code, err
    text = out + err
    assert "Traceback" not in text and 'File "' not in text
    errors = [line for line in err.splitlines() if line.startswith("mtlkit: error: ")]
    if case.code == 2:
        assert len(errors) == 1, err
        assert case.fragment in errors[0], errors[0]
        assert err.strip().splitlines()[-1] == errors[0]
    else:
        assert not errors
        assert case.fragment in text
    runs = sorted(env.out.iterdir()) if env.out.is_dir() else []
    if case.left is None:
        assert runs == [], f"run folder left behind: {runs}"
    else:
        assert len(runs) == 1
        results = json.loads((runs[0] / "results.json").read_text())
        assert results["status"] == case.left
        assert case.fragment in results["error"]
    if case.check is not None:
        case.check(env)
