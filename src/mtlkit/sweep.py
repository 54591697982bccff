"""Grids of runs as one command: expand a sweep file into configs and train them one after another.

A sweep file is YAML::

    name: scenes_paper_cpu            # default: the file's stem
    description: free text            # optional
    base: ../demo.yaml                # a config file (relative to this file, else to the cwd), a
                                      # config preset name (`demo`), or an inline mapping of config
                                      # sections; default: the defaults
    overrides:                        # optional: dotted keys set on the base for every run
      train.epochs: 5                 # (a mapping, or a list of key=value strings)
    grid:                             # dotted config key -> list of values (cartesian product)
      model.arch: [single, stan, mtan]
      weighting.name: [equal, dwa]
      seed: [0, 1]
    exclude:                          # a run is dropped when it matches every key of a rule
      - {model.arch: [single, stan], weighting.name: [dwa]}
    include:                          # extra runs; keys a rule leaves out take every grid value
      - {model.arch: mtan, weighting.name: uncertainty}
    run_name: "{model.arch}-{weighting.name}-s{seed}"   # optional; default built from the grid
    out_dir: runs/sweeps              # the sweep folder is <out_dir>/<name> unless --out is given

Includes are added after excludes (an include wins). Every run gets a deterministic name and its
run folder is ``<sweep dir>/<run name>/`` (``cfg.name`` is the run name, ``cfg.out_dir`` the sweep
folder). Re-running the sweep skips runs whose
``results.json`` says ``finished``, resumes runs that have ``checkpoints/last.pt``, and starts the
rest. A run that raises is recorded as failed in ``sweep.json`` (with the error and a traceback
file under ``logs/``) and the sweep goes on. ``sweep.json`` is rewritten atomically after every
change, so it always describes the sweep's state.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mtlkit.catalog import presets
from mtlkit.config import Config, apply_overrides, config_from_dict, read_yaml, set_dotted
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.io import atomic_write_json, atomic_write_text, pid_alive

#: keys a sweep file may have
SWEEP_KEYS = ("name", "description", "base", "overrides", "grid", "exclude", "include", "run_name", "out_dir")
#: prefixes of the default run-name parts for well-known keys ("" = the value alone)
NAME_PREFIXES = {"model.arch": "", "weighting.name": "", "seed": "s", "dataset.num_classes": "c"}
#: config keys that do not change a run's results: editing them does not make finished runs stale
HASH_IGNORED = ("out_dir", "dataset.root", "train.progress", "train.tensorboard", "train.num_workers",
                "train.device", "train.eval_batch_size", "train.compile", "train.channels_last")
#: run statuses recorded in sweep.json
STATUSES = ("pending", "running", "finished", "failed", "interrupted")

#: ``train_fn(cfg, resume, run_dir)``: train ``cfg`` into ``run_dir``, or continue the run in ``resume``
TrainFn = Callable[[Config, "Path | None", Path], Path]


@dataclass
class SweepRun:
    """One point of a sweep: its name, the grid values that define it, and its validated config."""

    name: str
    assignment: dict[str, Any]
    config: Config

    def plan_hash(self) -> str:
        """Hash of the run's config without :data:`HASH_IGNORED` keys: changes when the sweep changes the run."""
        data = self.config.to_dict()
        for key in HASH_IGNORED:
            *parents, last = key.split(".")
            node = data
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Sweep:
    """A parsed sweep file: the base config, the grid and its rules."""

    name: str
    source: Path | None
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)
    include: list[dict[str, list[Any]]] = field(default_factory=list)
    run_name: str | None = None
    out_dir: str = "runs/sweeps"
    description: str = ""

    @property
    def where(self) -> str:
        """How errors name this sweep (its file, or its name when built in code)."""
        return str(self.source) if self.source is not None else f"sweep {self.name!r}"

    def assignments(self) -> list[dict[str, Any]]:
        """Every grid point after ``exclude`` and ``include``, in a stable order, without duplicates."""
        keys = list(self.grid)
        points = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
        points = [p for p in points if not any(_matches(p, rule) for rule in self.exclude)]
        for rule in self.include:
            free = [k for k in keys if k not in rule]
            rule_keys = list(rule) + free
            choices = [rule[k] for k in rule] + [self.grid[k] for k in free]
            for values in itertools.product(*choices):
                point = dict(zip(rule_keys, values))
                point = {**{k: point[k] for k in keys}, **{k: v for k, v in point.items() if k not in keys}}
                if point not in points:
                    points.append(point)
        return points

    def runs(self) -> list[SweepRun]:
        """The runs of the sweep with validated configs; bad keys/values and name clashes are errors."""
        runs: list[SweepRun] = []
        seen: dict[str, dict[str, Any]] = {}
        for point in self.assignments():
            name = self._name(point)
            if name in seen:
                raise ConfigError(
                    f"{self.where}: runs {seen[name]} and {point} both get the name {name!r}; "
                    "set run_name to a template that tells them apart"
                )
            seen[name] = point
            data = copy.deepcopy(self.base)
            for key, value in self.fixed.items():
                set_dotted(data, key, value, where=self.where)
            apply_overrides(data, self.overrides)
            for key, value in point.items():
                set_dotted(data, key, value, where=self.where)
            data["name"] = name
            cfg = config_from_dict(data, source=f"{self.where}: run {name}")
            runs.append(SweepRun(name, point, cfg))
        return runs

    def _name(self, point: dict[str, Any]) -> str:
        """The deterministic run name of a grid point (template or default), safe as a folder name."""
        if self.run_name is not None:

            def sub(match: re.Match) -> str:
                """The value of one ``{key}`` placeholder."""
                key = match.group(1)
                if key not in point:
                    raise ConfigError(f"{self.where}: run_name uses {{{key}}}, which is not a grid key")
                return _fmt(point[key])

            text = re.sub(r"\{([^{}]+)\}", sub, self.run_name)
        else:
            parts = []
            for key, value in point.items():
                prefix = NAME_PREFIXES.get(key, key.split(".")[-1])
                parts.append(f"{prefix}{_fmt(value)}")
            text = "-".join(parts) or "run"
        safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("._")
        if not safe:
            raise ConfigError(f"{self.where}: run name {text!r} has no usable characters")
        return safe


def _fmt(value: Any) -> str:
    """A grid value as it appears in a run name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _matches(point: dict[str, Any], rule: dict[str, list[Any]]) -> bool:
    """True when every key of ``rule`` has one of the rule's values in ``point``."""
    return all(key in point and point[key] in values for key, values in rule.items())


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _rules(raw: Any, what: str, where: str, grid: dict[str, list[Any]], keys_must_be_in_grid: bool) -> list:
    """Validate ``exclude``/``include``: a list of mappings of dotted key -> value or list of values."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(r, dict) and r for r in raw):
        raise ConfigError(f"{where}: {what} must be a list of non-empty mappings (dotted key: values)")
    rules = []
    for rule in raw:
        for key in rule:
            if keys_must_be_in_grid and key not in grid:
                raise ConfigError(f"{where}: {what} key {key!r} is not a grid key ({', '.join(grid)})")
        rules.append({str(k): _as_list(v) for k, v in rule.items()})
    return rules


def _overrides(raw: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    """A sweep file's ``overrides``: a mapping of dotted keys to values, or a list of key=value strings."""
    if raw is None:
        return {}, []
    if isinstance(raw, dict):
        return {str(k): v for k, v in raw.items()}, []
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return {}, list(raw)
    raise ConfigError(f"{where}: overrides must be a mapping of dotted keys to values or a list of key=value strings")


def sweep_from_dict(
    data: dict[str, Any], source: Path | None = None, overrides: list[str] | None = None
) -> Sweep:
    """Validate a parsed sweep file; ``overrides`` (key=value) apply to every run after the file's own."""
    where = str(source) if source is not None else "sweep"
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(SWEEP_KEYS)})")
    base_raw = data.get("base")
    if base_raw is None:
        base: dict[str, Any] = {}
    elif isinstance(base_raw, dict):
        base = copy.deepcopy(base_raw)
    elif isinstance(base_raw, str):
        base = read_yaml(_resolve_base(base_raw, source))
    else:
        kind = type(base_raw).__name__
        raise ConfigError(f"{where}: base must be a config file path or a mapping, got {kind}")
    grid_raw = data.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise ConfigError(f"{where}: grid must be a mapping of dotted keys to lists of values")
    grid = {str(k): _as_list(v) for k, v in grid_raw.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ConfigError(f"{where}: grid key {empty[0]!r} has no values")
    for key in ("name", "out_dir"):
        if key in grid:
            raise ConfigError(f"{where}: grid key {key!r} is set by the sweep itself")
    name = data.get("name") or (source.stem if source is not None else "sweep")
    fixed, listed = _overrides(data.get("overrides"), where)
    run_name = data.get("run_name")
    if run_name is not None and not isinstance(run_name, str):
        raise ConfigError(f"{where}: run_name must be a string template like '{{model.arch}}-s{{seed}}'")
    return Sweep(
        name=str(name),
        source=source,
        base=base,
        grid=grid,
        fixed=fixed,
        overrides=listed + list(overrides or []),
        exclude=_rules(data.get("exclude"), "exclude", where, grid, keys_must_be_in_grid=True),
        include=_rules(data.get("include"), "include", where, grid, keys_must_be_in_grid=False),
        run_name=run_name,
        out_dir=str(data.get("out_dir") or "runs/sweeps"),
        description=str(data.get("description") or ""),
    )


def _resolve_base(text: str, source: Path | None) -> Path:
    """A base config path: relative to the sweep file's folder, then to the working directory, then a preset."""
    path = Path(text)
    if path.is_absolute():
        return path
    candidates = ([source.parent / path] if source is not None else []) + [Path.cwd() / path]
    for cand in candidates:
        if cand.is_file():
            return cand
    if text in presets("config"):
        return presets("config")[text]
    raise ConfigError(f"{source or 'sweep'}: base config {text!r} not found (looked in "
                      f"{', '.join(str(c.parent) for c in candidates)})")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file (see the module docstring for the format)."""
    path = Path(path)
    return sweep_from_dict(read_yaml(path), source=path, overrides=overrides)


def check_names(runs: list[SweepRun]) -> None:
    """Look up every run's dataset, architecture and weighting in the registries (typos fail up front)."""
    from mtlkit.registry import ARCHITECTURES, DATASETS, WEIGHTINGS

    for run in runs:
        try:
            DATASETS.get(run.config.dataset.name)
            ARCHITECTURES.get(run.config.model.arch)
            WEIGHTINGS.get(run.config.weighting.name)
        except ConfigError as err:
            raise ConfigError(f"run {run.name}: {err}") from None


# --------------------------------------------------------------------------- run folders


def run_status(run_dir: Path) -> str:
    """``finished`` (results.json says so), ``resumable`` (checkpoints/last.pt), ``empty`` or ``absent``."""
    if not run_dir.is_dir():
        return "absent"
    results = run_dir / "results.json"
    if results.is_file():
        try:
            if json.loads(results.read_text()).get("status") == "finished":
                return "finished"
        except (OSError, json.JSONDecodeError):
            pass
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "resumable"
    return "empty"


# --------------------------------------------------------------------------- state and running


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


@dataclass
class SweepOutcome:
    """What one invocation of a sweep did: the state written to sweep.json and the failures."""

    sweep_dir: Path
    state: dict[str, Any]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Records of the runs whose status is failed."""
        return [r for r in self.state["runs"] if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        """True when no run failed."""
        return not self.failed


def default_sweep_dir(sweep: Sweep) -> Path:
    """``<out_dir>/<name>`` of the sweep file."""
    return Path(sweep.out_dir) / sweep.name


def plan(sweep: Sweep, sweep_dir: Path) -> list[dict[str, Any]]:
    """For each run: its name, grid values and what a run of the sweep would do now (train/resume/skip)."""
    state = _read_state(sweep_dir)
    recorded = {r["name"]: r for r in state.get("runs", [])} if state else {}
    rows = []
    for run in sweep.runs():
        rec = recorded.get(run.name, {})
        run_dir = sweep_dir / run.name
        status = run_status(run_dir)
        made_by = rec.get("run_plan_hash")
        stale = status in ("finished", "resumable") and made_by not in (None, run.plan_hash())
        action = {"finished": "skip", "resumable": "resume"}.get(status, "train")
        rows.append({"name": run.name, "assignment": run.assignment, "action": "stale" if stale else action,
                     "run_dir": str(run_dir)})
    return rows


def _read_state(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg}); delete it to start a new record") from None


@contextmanager
def _lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``sweep.lock`` (our pid) so two processes never run the same sweep folder at once."""
    path = sweep_dir / "sweep.lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise MtlkitError(f"{sweep_dir}: sweep is being run by process {pid} (sweep.lock)") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise MtlkitError(f"{sweep_dir}: could not take sweep.lock (another process keeps recreating it)")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


    return True


def _default_train() -> TrainFn:
    """The trainer's ``train``, imported when a sweep actually trains."""
    from mtlkit.train.trainer import train

    def train_fn(cfg: Config, resume: Path | None, run_dir: Path) -> Path:
        """Resume ``resume`` with its saved config, or train ``cfg`` into ``run_dir``."""
        return train(resume=resume) if resume is not None else train(cfg, run_dir=run_dir)

    return train_fn


def run_sweep(
    sweep: Sweep,
    sweep_dir: str | Path | None = None,
    train_fn: TrainFn | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Train every run of ``sweep`` in turn (skip finished, resume interrupted), recording sweep.json."""
    from tqdm.auto import tqdm

    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(sweep)
    runs = sweep.runs()
    train_fn = train_fn or _default_train()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _lock(sweep_dir):
        old = _read_state(sweep_dir) or {}
        previous = {r["name"]: r for r in old.get("runs", [])}
        state: dict[str, Any] = {
            "name": sweep.name,
            "description": sweep.description,
            "source": str(sweep.source.resolve()) if sweep.source is not None else None,
            "grid": sweep.grid,
            "exclude": sweep.exclude,
            "include": sweep.include,
            "fixed": sweep.fixed,
            "overrides": sweep.overrides,
            "created": old.get("created", _now()),
            "updated": _now(),
            "runs": [],
        }
        for run in runs:
            rec = previous.get(run.name, {})
            state["runs"].append({
                "name": run.name,
                "assignment": run.assignment,
                "plan_hash": run.plan_hash(),
                "config_hash": run.config.hash(),
                "status": rec.get("status", "pending") if rec.get("status") != "running" else "interrupted",
                "run_dir": run.name,
                "error": rec.get("error"),
                "traceback": rec.get("traceback"),
                "attempts": rec.get("attempts", 0),
                "wall_time": rec.get("wall_time", 0.0),
                "run_plan_hash": rec.get("run_plan_hash"),
                "last_action": None,
            })

        def save() -> None:
            """Write sweep.json atomically with the current state."""
            state["updated"] = _now()
            atomic_write_json(sweep_dir / "sweep.json", state)

        save()
        say = log or (lambda msg: tqdm.write(msg))
        bar = tqdm(total=len(runs), desc=f"sweep {sweep.name}", unit="run", disable=not progress, position=0)
        try:
            for run, rec in zip(runs, state["runs"]):
                bar.set_postfix_str(run.name)
                _one_run(run, rec, sweep_dir, train_fn, save, say)
                save()
                bar.update(1)
        finally:
            bar.close()
            save()
        n = {s: sum(r["status"] == s for r in state["runs"]) for s in STATUSES}
        say(f"sweep {sweep.name}: {n['finished']} finished, {n['failed']} failed, "
            f"{len(runs) - n['finished'] - n['failed']} other; state in {sweep_dir / 'sweep.json'}")
    return SweepOutcome(sweep_dir, state)


def _one_run(run: SweepRun, rec: dict[str, Any], sweep_dir: Path, train_fn: TrainFn,
             save: Callable[[], None], say: Callable[[str], None]) -> None:
    """Skip, resume or start one run, updating its record ``rec`` (status, error, times)."""
    cfg = run.config.model_copy(deep=True)
    cfg.out_dir = str(sweep_dir)
    run_dir = sweep_dir / run.name
    status = run_status(run_dir)
    made_by = rec.get("run_plan_hash")
    if status in ("finished", "resumable") and made_by is not None and made_by != rec["plan_hash"]:
        rec.update(status="failed", last_action="stale",
                   error=f"{run_dir}: made from a different config (the sweep changed since); delete that "
                         "folder to retrain it, or give the sweep another --out folder")
        say(f"[{run.name}] FAILED: {rec['error']}")
        return
    if status == "finished":
        rec.update(status="finished", last_action="skipped", error=None)
        say(f"[{run.name}] finished already: skipped")
        return
    resume = run_dir if status == "resumable" else None
    rec.update(status="running", last_action="resumed" if resume else "trained", error=None, traceback=None,
               run_plan_hash=rec["plan_hash"])
    rec["attempts"] += 1
    rec["started"] = _now()
    save()
    say(f"[{run.name}] {'resuming' if resume else 'training'} in {run_dir}")
    start = time.perf_counter()
    try:
        out = Path(train_fn(cfg, resume, run_dir))
    except Exception as err:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        rec["wall_time"] += time.perf_counter() - start
        tb_path = sweep_dir / "logs" / f"{run.name}.traceback.txt"
        atomic_write_text(tb_path, traceback.format_exc())
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        rec.update(status="failed", error=message, traceback=_rel(tb_path, sweep_dir), ended=_now())
        say(f"[{run.name}] FAILED: {rec['error']} (traceback: {tb_path})")
        return
    except BaseException:
        rec["wall_time"] += time.perf_counter() - start
        rec.update(status="interrupted", ended=_now())
        raise
    rec["wall_time"] += time.perf_counter() - start
    rec["ended"] = _now()
    if out.resolve() != run_dir.resolve():
        rec.update(status="failed", error=f"training wrote {out}, not the sweep's folder {run_dir}")
    elif run_status(out) == "finished":
        rec["status"] = "finished"
    else:
        rec.update(status="failed", error=f"{out}: training returned but results.json does not say finished")
    if rec["status"] == "failed":
        say(f"[{run.name}] FAILED: {rec['error']}")
