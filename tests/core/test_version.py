"""One version source (mtlkit.__version__), read by pyproject and recorded in results; the changelog's form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mtlkit
from mtlkit.train.rundir import provenance

ROOT = Path(__file__).resolve().parents[2]
#: the section kinds Keep a Changelog allows under a version
KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_pyproject_reads_the_package_version() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mtlkit.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", mtlkit.__version__)


def test_results_record_the_package_version() -> None:
    """The trainer merges provenance() into every results.json."""
    assert provenance()["versions"]["mtlkit"] == mtlkit.__version__


def test_changelog_is_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    versions = re.findall(r"^## (.*)$", text, flags=re.M)
    assert versions, "no version sections"
    released = []
    for i, heading in enumerate(versions):
        if heading == "[Unreleased]":
            assert i == 0, "[Unreleased] must come first"
            continue
        m = re.fullmatch(r"\[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}", heading)
        assert m, f"bad version heading {heading!r} (want '[X.Y.Z] - YYYY-MM-DD')"
        released.append(tuple(int(x) for x in m.group(1).split(".")))
    assert released == sorted(released, reverse=True) and len(set(released)) == len(released)
    if versions[0] != "[Unreleased]":
        assert versions[0].startswith(f"[{mtlkit.__version__}]"), "the newest release is not __version__"
    kinds = set(re.findall(r"^### (.*)$", text, flags=re.M))
    assert kinds and kinds <= KINDS, kinds - KINDS
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        assert re.search(r"^### ", section, flags=re.M), f"section {section.splitlines()[0]!r} lists no changes"
