"""What docs/ARCHITECTURE.md promises about the tree, checked on the source.

"Nothing outside a task kind's own file switches on a kind string": outside ``src/mtlkit/tasks/`` no
code compares a ``.kind`` attribute, and no registered kind's name appears as a string literal used as a
lookup key (a dict display's key, a subscript) or as a comparison operand (``==``, ``in (...)``, a
``match`` case). Docstrings, messages and help text may name kinds: they are not keys or operands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mtlkit
from mtlkit.registry import TASK_KINDS

SRC = Path(mtlkit.__file__).parent
#: the kinds shipped with mtlkit (the scan's literals; the registry must hold exactly these)
KIND_NAMES = ("segmentation", "depth", "normal", "classification", "binary", "edge", "regression")

#: (file, literal) pairs that are not kind switches: the .npy layout's folder names ``depth`` and ``normal``
#: (equal to the kinds' names) as keys of the arrays the generators write and of the scenes cache's
#: meta.json (written in data/scenes/__init__.py)
_ALLOWED = {
    ("data/prepare_nyuv2.py", "depth"),
    ("data/prepare_nyuv2.py", "normal"),
    ("data/scenes/render.py", "depth"),
    ("data/scenes/render.py", "normal"),
    ("data/scenes/__init__.py", "depth"),
    ("data/scenes/__init__.py", "normal"),
}


def _sources() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("tasks/"):
            continue
        out.append((rel, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return out


def _is_kind_attribute(node: ast.AST) -> bool:
    """``x.kind``, except NumPy's ``x.dtype.kind`` (a dtype's character code)."""
    if not (isinstance(node, ast.Attribute) and node.attr == "kind"):
        return False
    return not (isinstance(node.value, ast.Attribute) and node.value.attr == "dtype")


def _is_parameter_kind(node: ast.AST) -> bool:
    """``inspect.Parameter.VAR_KEYWORD`` and the like: what a signature parameter's ``.kind`` is compared with."""
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "Parameter"


def _operands(node: ast.AST) -> list[ast.AST]:
    """The expressions a node uses as keys or comparison operands (tuple/list/set displays unpacked)."""
    if isinstance(node, ast.Compare):
        found = []
        for side in (node.left, *node.comparators):
            found += side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        return found
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None]
    if isinstance(node, ast.Subscript):
        return [node.slice]
    if isinstance(node, ast.MatchValue):
        return [node.value]
    return []


def _violations(packages: tuple[str, ...] | None = None) -> list[str]:
    """``file:line: what`` for each kind switch outside tasks/ (only under ``packages`` when given)."""
    out = []
    for rel, tree in _sources():
        top = rel.split("/")[0]
        if packages is not None and top not in packages:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = (node.left, *node.comparators)
                if any(_is_kind_attribute(s) for s in sides) and not any(_is_parameter_kind(s) for s in sides):
                    out.append(f"{rel}:{node.lineno}: compares .kind: {ast.unparse(node)}")
            for operand in _operands(node):
                if (
                    isinstance(operand, ast.Constant)
                    and operand.value in KIND_NAMES
                    and (rel, operand.value) not in _ALLOWED
                ):
                    out.append(f"{rel}:{operand.lineno}: kind name {operand.value!r} as a key or operand")
    return out


def test_the_scan_knows_every_shipped_kind() -> None:
    assert set(KIND_NAMES) <= set(TASK_KINDS.names())


def test_no_kind_switch_outside_tasks() -> None:
    """data/, metrics/, report/, train/, ... ask the task's kind instead of switching on its name."""
    assert _violations() == []


def test_the_scan_finds_a_kind_switch(tmp_path: Path) -> None:
    """The checks above would catch the patterns they forbid (and pass NumPy's dtype.kind)."""
    code = (
        "def f(task, d, arr):\n"
        "    if task.kind == 'x': pass\n"
        "    if arr.dtype.kind == 'f': pass\n"
        "    return {'depth': 1}, d['normal'], task.name in ('edge', 'y')\n"
    )
    tree = ast.parse(code)
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert [any(_is_kind_attribute(s) for s in (c.left, *c.comparators)) for c in compares] == [True, False, False]
    literals = [
        o.value for n in ast.walk(tree) for o in _operands(n) if isinstance(o, ast.Constant) and o.value in KIND_NAMES
    ]
    assert sorted(literals) == ["depth", "edge", "normal"]


def _tree_block() -> str:
    """The tree at the top of docs/ARCHITECTURE.md (the first fenced block)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return text.split("```")[1]


def test_the_map_names_every_package_and_every_entry_exists() -> None:
    """Each subpackage and top-level module of src/mtlkit is on the map, and everything the map names exists."""
    named = {
        line.split()[0].rstrip("/")
        for line in _tree_block().splitlines()[2:]
        if line.startswith("  ") and not line.startswith("   ")
    }
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in SRC.glob("*.py") if not p.name.startswith("_")} - {"__init__.py"}
    assert packages - {"presets"} <= named, sorted(packages - named)
    assert modules <= named, sorted(modules - named)
    assert all((SRC / n).exists() for n in named), sorted(n for n in named if not (SRC / n).exists())


def test_tests_mirror_the_source() -> None:
    """Every unit-test folder under tests/ names a package of src/mtlkit (or core/, balance/: the top level)."""
    tests = Path(__file__).resolve().parents[1]
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert folders - packages == {"core", "balance", "integration", "e2e"}, sorted(folders - packages)
    assert not list(tests.glob("test_*.py")), "a test file directly under tests/: put it in its package's folder"
