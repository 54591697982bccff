"""Reading run and sweep folders (the documented run-folder format) into plain records for reports."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError, warn
from mtlkit.readers import read_text, read_yaml_file
from mtlkit.records import EpochRecord, RunResults
from mtlkit.tasks import Task

#: paper order of the MTAN table's architectures (others follow alphabetically)
ARCH_ORDER = ("single", "stan", "split_wide", "split_deep", "dense", "cross_stitch", "mtan")
#: paper order of its weighting methods (others follow alphabetically)
WEIGHTING_ORDER = ("equal", "uncertainty", "dwa")
#: architectures made of one network per task: the paper's "weighting n.a." rows
SINGLE_TASK_ARCHS = ("single", "stan")


@dataclass
class Run:
    """One run folder: resolved config, per-epoch log, results (None while unfinished)."""

    path: Path
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    results: dict[str, Any] | None
    sweep: str | None = None
    sweep_record: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.path.name

    @property
    def finished(self) -> bool:
        """True when results.json says ``finished`` (the trainer's completion mark)."""
        return self.results is not None and self.results.get("status") == "finished"

    @property
    def status(self) -> str:
        """finished, the sweep's status (failed, interrupted...), interrupted (checkpoint left) or incomplete."""
        if self.finished:
            return "finished"
        if (self.results or {}).get("status") == "failed":
            return "failed"
        if self.sweep_record and self.sweep_record.get("status"):
            return str(self.sweep_record["status"])
        if (self.path / "checkpoints" / "last.pt").is_file():
            return "interrupted"
        return (self.results or {}).get("status", "incomplete")

    @property
    def error(self) -> str | None:
        """Why the run failed: results.json's one-line reason (the trainer's), else the sweep's record."""
        return (self.results or {}).get("error") or (self.sweep_record or {}).get("error")

    @property
    def non_finite(self) -> list[str]:
        """``epoch N: key`` of every NaN/inf value the run logged (null + ``non_finite``, or old bare NaN/Infinity)."""
        out = []
        for e in self.epochs:
            keys = list(e.get("non_finite") or [])
            for section in ("train", "val", "weights"):
                for k, v in (e.get(section) or {}).items():
                    if isinstance(v, float) and not math.isfinite(v):
                        keys.append(f"{section}.{k}")
            out += [f"epoch {e.get('epoch', '?')}: {k}" for k in keys]
        return out

    @property
    def arch(self) -> str:
        """Architecture name (results.json, else config.yaml)."""
        return str((self.results or {}).get("arch") or self.config.get("model", {}).get("arch", "?"))

    @property
    def weighting(self) -> str:
        """Weighting method name (results.json, else config.yaml)."""
        return str((self.results or {}).get("weighting") or self.config.get("weighting", {}).get("name", "?"))

    @property
    def dataset(self) -> str:
        """Dataset name (results.json, else config.yaml)."""
        return str((self.results or {}).get("dataset") or self.config.get("dataset", {}).get("name", "?"))

    @property
    def seed(self) -> int | None:
        """The run's seed from config.yaml (None if unknown)."""
        seed = self.config.get("seed")
        return int(seed) if seed is not None else None

    @property
    def protocol(self) -> str:
        """The evaluation protocol of the run's metrics (results.json, else config.yaml, else pooled)."""
        recorded = ((self.results or {}).get("eval") or {}).get("protocol")
        return str(recorded or (self.config.get("eval") or {}).get("protocol") or "pooled")

    @property
    def report_last(self) -> int:
        """How many last epochs the run's config asks reports to average (``eval.report_last``, else 1)."""
        return int((self.config.get("eval") or {}).get("report_last") or 1)

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """Task declarations from results.json: name, kind, channels, metrics {m: higher}, main_metric."""
        return list((self.results or {}).get("tasks") or [])

    @property
    def wall_time(self) -> float | None:
        """Seconds the run trained: results.json's wall time, else (unfinished) the last logged epoch's time
        since the start (resumed parts included); None when neither was written."""
        recorded = (self.results or {}).get("wall_time")
        if recorded is not None:
            return float(recorded)
        logged = self.epochs[-1].get("time") if self.epochs else None
        return float(logged) if logged is not None else None

    @property
    def logged_tasks(self) -> list[dict[str, Any]]:
        """The task declarations of results.json, else (unfinished runs) the tasks metrics.jsonl logs:
        ``name`` from the ``loss/<task>`` training keys, ``main_metric`` the first ``<task>/<metric>``
        validation key, ``metrics`` empty (the better direction is not logged)."""
        if self.tasks:
            return self.tasks
        if not self.epochs:
            return []
        first = self.epochs[0]
        names = [k.removeprefix("loss/") for k in first.get("train") or {} if k.startswith("loss/")]
        out = []
        for name in names:
            metric = next((k.split("/", 1)[1] for k in first.get("val") or {} if k.startswith(f"{name}/")), None)
            out.append({"name": name, "main_metric": metric, "metrics": {}})
        return out

    def values(self, source: str = "final", last: int = 1) -> dict[str, float]:
        """Validation metrics ``task/metric``: results' final/best, or the mean of the last ``last`` epochs
        (each task's ``metrics`` and its kind's ``reported_metrics``)."""
        if last > 1:
            tasks = [Task.from_dict(t) for t in self.tasks]
            keys = [f"{t.name}/{m}" for t in tasks for m in (*t.metrics, *t.reported_metrics)]
            tail = [e.get("val", {}) for e in self.epochs[-last:]]
            out = {}
            for key in keys:
                vals = [float(v[key]) for v in tail if key in v]
                if vals:
                    out[key] = sum(vals) / len(vals)
            return out
        return {k: float(v) for k, v in ((self.results or {}).get(source) or {}).items()}

    def series(self, split: str, key: str) -> list[tuple[int, float]]:
        """``(epoch, value)`` of ``metrics.jsonl[*][split][key]`` where logged (split: train, val, weights)."""
        out = []
        for e in self.epochs:
            value = (e.get(split) or {}).get(key)
            if value is not None:
                out.append((int(e["epoch"]), float(value)))
        return out


@dataclass
class Collection:
    """Everything a report covers: runs, plus runs a sweep lists that have no folder to read."""

    runs: list[Run] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)


def is_run_dir(path: Path) -> bool:
    """A folder with the trainer's files (results.json, metrics.jsonl or checkpoints/)."""
    return path.is_dir() and any((path / f).exists() for f in ("results.json", "metrics.jsonl", "checkpoints"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a truncated last line (a killed writer) is skipped with a warning."""
    if not path.is_file():
        return []
    lines = [ln for ln in read_text(path).splitlines() if ln.strip()]
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warn(
                    f"{path}: line {i + 1} (the last) is not valid JSON, a writer killed mid-line? "
                    f"Skipped: {len(out)} epoch(s) read"
                )
                break
            raise ConfigError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: line {i + 1} is a JSON {type(obj).__name__}, expected an object per epoch")
        out.append(obj)
    return out


def read_run(path: Path, sweep: str | None = None, record: dict[str, Any] | None = None) -> Run:
    """Read one run folder; unreadable JSON/YAML is a ConfigError naming the file."""
    config: dict[str, Any] = {}
    cfg_path = path / "config.yaml"
    if cfg_path.is_file():
        config = read_yaml_file(cfg_path) or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{cfg_path}: expected a mapping of config sections, got a {type(config).__name__}")
        _check_config(config, cfg_path)
    results = None
    res_path = path / "results.json"
    if res_path.is_file():
        try:
            results = json.loads(read_text(res_path))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{res_path}: invalid JSON ({err.msg})") from None
        if not isinstance(results, dict):
            raise ConfigError(
                f"{res_path}: expected a JSON object (the trainer's results), got a {_json_kind(results)}"
            )
    epochs = read_jsonl(path / "metrics.jsonl")
    for i, e in enumerate(epochs):  # checked against the trainer's schema (mtlkit.records)
        try:
            EpochRecord.from_dict(e)
        except TypeError as err:
            raise ConfigError(
                f"{path / 'metrics.jsonl'}: epoch record {i + 1} is not a metrics record ({err})"
            ) from None
    if results is not None:
        _check_results(results, res_path)
    return Run(path, config, epochs, results, sweep, record)


def _check_results(results: dict[str, Any], path: Path) -> None:
    """results.json against :class:`RunResults` (all of it when finished, the fields present otherwise)."""
    try:
        if results.get("status") == "finished":
            RunResults.from_dict(results)
        else:
            RunResults.check_types(results)
        for i, task in enumerate(results.get("tasks") or []):
            if not isinstance(task, dict):
                raise TypeError(f"tasks[{i}] is not an object")
            Task.from_dict(task)
        if not isinstance(results.get("error", ""), str):
            raise TypeError("field 'error' is not a string")
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: not a results record ({err})") from None


def _check_config(config: dict[str, Any], path: Path) -> None:
    """The keys of a run's config.yaml that mtlkit knows have their types (others, e.g. from a newer mtlkit, pass)."""
    from pydantic import BaseModel

    from mtlkit.config import Config, config_from_dict

    def known(data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            info = model.model_fields.get(key)
            if info is None:
                continue
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(value, dict):
                value = known(value, sub)
            out[key] = value
        return out

    config_from_dict(known(config, Config), source=str(path))


def _load_sweep_dir(path: Path, out: Collection) -> None:
    """Add the runs sweep.json lists (and those without a folder to ``missing``)."""
    try:
        state = json.loads(read_text(path / "sweep.json"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path / 'sweep.json'}: invalid JSON ({err.msg})") from None
    if not isinstance(state, dict) or not isinstance(state.get("runs", []), list):
        raise ConfigError(f"{path / 'sweep.json'}: expected a JSON object with a list of runs")
    out.sweeps.append({"name": state.get("name", path.name), "path": str(path), "runs": len(state.get("runs", []))})
    for rec in state.get("runs", []):
        rel = rec.get("run_dir")
        run_dir = (path / rel) if rel and not Path(rel).is_absolute() else Path(rel) if rel else None
        if run_dir is not None and run_dir.is_dir():
            out.runs.append(read_run(run_dir, state.get("name"), rec))
        else:
            out.missing.append(
                {
                    "name": rec.get("name"),
                    "sweep": state.get("name"),
                    "status": rec.get("status"),
                    "error": rec.get("error"),
                }
            )


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def collect(paths: list[Path]) -> Collection:
    """Runs under the given run folders, sweep folders, or folders holding either (one level down)."""
    out = Collection()
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path}: no such run or sweep folder")
        if (path / "sweep.json").is_file():
            _load_sweep_dir(path, out)
        elif is_run_dir(path):
            out.runs.append(read_run(path))
        else:
            found = False
            for child in sorted(p for p in path.iterdir() if p.is_dir()):
                if (child / "sweep.json").is_file():
                    _load_sweep_dir(child, out)
                    found = True
                elif is_run_dir(child):
                    out.runs.append(read_run(child))
                    found = True
            if not found:
                raise ConfigError(f"{path}: holds no run folder (results.json/metrics.jsonl) or sweep.json")
    seen: set[Path] = set()
    unique = []
    for run in out.runs:
        key = run.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(run)
    out.runs = unique
    return out


def order_key(arch: str, weighting: str) -> tuple:
    """Sort key putting architectures and weightings in the paper's order."""
    a = ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER)
    w = WEIGHTING_ORDER.index(weighting) if weighting in WEIGHTING_ORDER else len(WEIGHTING_ORDER)
    return (a, arch, w, weighting)
