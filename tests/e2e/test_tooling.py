"""The tooling the docs promise is wired up: the type checker and the formatter in ``make lint``,
``make lint`` in CI, ``py.typed`` in the wheel, the pre-commit hooks, and CONTRIBUTING.md linked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _target(name: str) -> str:
    """The recipe lines of one Makefile target."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(name)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, flags=re.M)
    assert m, f"no `make {name}` target"
    return m.group(1)


def test_py_typed_is_shipped() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "src" / "mtlkit" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["mtlkit"]
    assert "mtlkit/py.typed" in (ROOT / ".ci" / "wheel_check.sh").read_text()  # asserted in the built wheel


def test_mypy_is_configured_without_global_escapes() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(req.startswith("mypy") for req in project["project"]["optional-dependencies"]["dev"])
    mypy = project["tool"]["mypy"]
    assert mypy["files"] == ["src/mtlkit"] and mypy["warn_unused_ignores"] is True
    # libraries without types are named one by one, not silenced for every import
    assert "ignore_missing_imports" not in mypy and "ignore_errors" not in mypy
    assert "disable_error_code" not in mypy
    for override in mypy.get("overrides", []):  # mtlkit's own modules are checked, all of them
        assert "ignore_errors" not in override, override


def test_make_lint_checks_rules_formatting_and_types() -> None:
    lint = _target("lint")
    assert "ruff check" in lint and "ruff format --check" in lint and "/mypy" in lint
    assert "ruff format $(LINT_PATHS)" in _target("format")


def test_ci_runs_make_lint_as_a_timed_step() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make lint" in lines
    assert any(line.startswith('echo "== make lint:') for line in lines)
    assert lines.index("make lint") < lines.index("make test")  # the cheap check fails first


def test_pre_commit_hooks_use_the_venv() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}
    assert {"ruff", "ruff-format", "mypy"} <= set(hooks)
    assert all(h["entry"].startswith(".venv/bin/") and h["language"] == "system" for h in hooks.values())
    assert hooks["mypy"]["pass_filenames"] is False  # the whole configured tree, as `make lint`


def test_contributing_is_linked_and_names_real_paths() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    assert "](CONTRIBUTING.md)" in (ROOT / "README.md").read_text()
    assert "pre-commit install" in text
    # every repository path the guide names in backticks, and every file it links, exists
    paths = set(re.findall(r"`((?:src|tests|docs|bench|configs|\.ci)/[\w./-]*\w/?)`", text))
    paths |= set(re.findall(r"\]\(([^)#:]+)\)", text))
    assert paths, "no paths found"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"
    # every `make X` it names is a Makefile target
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([\w-]+)", text))
    assert named <= targets, named - targets
