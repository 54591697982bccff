"""A sweep file: a grid of configs, expanded into named runs with validated configs.

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
    executors:                        # optional: how each executor places the runs (flags override)
      local: {parallel: 2}
      slurm: {partition: gpu, time_min: 240, gpus_per_node: 1, cpus_per_task: 8}
      ray: {num_cpus: 4, num_gpus: 1}

Includes are added after excludes (an include wins). Every run gets a deterministic name and its
run folder is ``<sweep dir>/<run name>/`` (``cfg.name`` is the run name, ``cfg.out_dir`` the sweep
folder): the folder is fixed before any executor starts, so parallel runs never race for one.
The ``executors`` keys are those of :mod:`mtlkit.sweep.options`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlkit.catalog import presets
from mtlkit.config import Config, apply_overrides, config_from_dict, folder_name_problem, read_yaml, set_dotted
from mtlkit.errors import ConfigError, shorten
from mtlkit.records import HASH_IGNORED
from mtlkit.sweep.options import ExecutorOptions, executor_options

#: keys a sweep file may have
SWEEP_KEYS = (
    "name",
    "description",
    "base",
    "overrides",
    "grid",
    "exclude",
    "include",
    "run_name",
    "out_dir",
    "executors",
)
#: prefixes of the default run-name parts for well-known keys ("" = the value alone)
NAME_PREFIXES = {"model.arch": "", "weighting.name": "", "seed": "s", "dataset.num_classes": "c"}


@dataclass
class SweepRun:
    """One point of a sweep: its name, the grid values that define it, and its validated config."""

    name: str
    assignment: dict[str, Any]
    config: Config

    def plan_hash(self) -> str:
        """Hash of the run's ``Config.hashed_dict()`` without :data:`HASH_IGNORED` keys: changes with the run."""
        data = self.config.hashed_dict()
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
    executors: ExecutorOptions = field(default_factory=ExecutorOptions)

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
    """A scalar as a one-element list; lists and tuples as lists."""
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


def sweep_from_dict(data: dict[str, Any], source: Path | None = None, overrides: list[str] | None = None) -> Sweep:
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
    problem = folder_name_problem(name)
    if problem is not None:
        raise ConfigError(f"{where}: name {shorten(name)} {problem} (the sweep folder is <out_dir>/<name>)")
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
        executors=executor_options(data.get("executors"), where),
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
    raise ConfigError(
        f"{source or 'sweep'}: base config {text!r} not found (looked in "
        f"{', '.join(str(c.parent) for c in candidates)})"
    )


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file (see the module docstring for the format)."""
    path = Path(path)
    return sweep_from_dict(read_yaml(path), source=path, overrides=overrides)


def check_names(runs: list[SweepRun]) -> None:
    """Look up every run's dataset, architecture, weighting and trackers (typos, missing extras fail up front)."""
    from mtlkit.registry import ARCHITECTURES, DATASETS, WEIGHTINGS
    from mtlkit.trackers import check_loggers

    for run in runs:
        try:
            check_loggers(list[str](run.config.train.loggers), run.config.train.tracker_options)
            DATASETS.get(run.config.dataset.name)
            ARCHITECTURES.get(run.config.model.arch)
            WEIGHTINGS.get(run.config.weighting.name)
        except ConfigError as err:
            raise ConfigError(f"run {run.name}: {err}") from None


def default_sweep_dir(sweep: Sweep) -> Path:
    """``<out_dir>/<name>`` of the sweep file."""
    return Path(sweep.out_dir) / sweep.name
