"""The Visual Decathlon is a plugin: the core imports it through ``registry.PLUGINS`` only and works without it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mtlkit.cli.main import build_parser
from mtlkit.registry import ARCHITECTURES, DATASETS, PLUGINS

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "mtlkit"
PLUGIN = "mtlkit.decathlon"
#: the one place in the core that names the plugin
PLUGIN_LINE = ("registry.py", 'PLUGINS = ("mtlkit.decathlon",)')


def _core_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if PACKAGE / "decathlon" not in p.parents)


def _names_plugin(text: str) -> bool:
    return text == PLUGIN or text.startswith(f"{PLUGIN}.")


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are module, class or function docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_no_core_module_imports_or_names_the_decathlon() -> None:
    """No import of mtlkit.decathlon and no string naming it (import_module, find_spec) outside the plugin
    line; no code string mentions the decathlon or its architectures (docstrings may cite it)."""
    found = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(PACKAGE).as_posix()
        lines = path.read_text().splitlines()
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{rel}:{node.lineno} import {a.name}" for a in node.names if _names_plugin(a.name)]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
                named = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if any(_names_plugin(n) for n in named):
                    found.append(f"{rel}:{node.lineno} from {node.module} import ...")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value.lower()
                if "decathlon" in text or text in ("wrn", "wrn_mtan"):
                    if (rel, lines[node.lineno - 1].strip()) != PLUGIN_LINE:
                        found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, found
    assert PLUGIN in PLUGINS


def test_the_plugin_registers_its_pieces() -> None:
    assert {"wrn", "wrn_mtan"} <= set(ARCHITECTURES.names())
    assert {"decathlon", "decathlon_synthetic"} <= set(DATASETS.names())
    assert ARCHITECTURES.get("wrn_mtan").__module__ == "mtlkit.decathlon.wrn"
    parser = build_parser()
    args = parser.parse_args(["evaluate", "RUN", "--refresh-bn"])
    assert args.evaluation.suffix == "-refresh-bn" and parser.parse_args(["evaluate", "RUN"]).evaluation is None
    assert parser.parse_args(["decathlon-score", "--acc", "svhn=90"]).func.__module__ == "mtlkit.decathlon.cli"


BLOCKED = textwrap.dedent("""
    import sys
    sys.modules["mtlkit.decathlon"] = None  # as if the plugin were not installed

    import mtlkit.data, mtlkit.models, mtlkit.report, mtlkit.train.trainer  # noqa: E401
    import torch
    from mtlkit.catalog import resolve
    from mtlkit.cli.main import build_parser, main
    from mtlkit.config import load_config
    from mtlkit.models import build_model
    from mtlkit.registry import ARCHITECTURES, DATASETS
    from mtlkit.tasks import classification_task

    cfg = load_config(resolve("demo"), [])
    tasks = DATASETS.get(cfg.dataset.name)(cfg.dataset).tasks()
    model = build_model(cfg.model.arch, tasks, 0.125)
    out = model(torch.zeros(1, 3, 32, 32))
    assert set(out) == {t.name for t in tasks}, out
    wrn = build_model("mtan", [classification_task("a", 3)], 0.125, backbone="wrn28")
    assert wrn(torch.zeros(2, 3, 64, 64))["a"].shape == (2, 3)
    assert not {"wrn", "wrn_mtan"} & set(ARCHITECTURES.names()), ARCHITECTURES.names()
    assert "decathlon" not in DATASETS.names()
    parser = build_parser()
    assert "decathlon-score" not in parser.format_help()
    assert main(["list", "--json"]) == 0
    assert not [m for m, mod in sys.modules.items() if m.startswith("mtlkit.decathlon") and mod is not None]
    print("core ok")
""")


def test_the_core_works_without_the_plugin() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("core ok")
