"""Generate the reference pages of the documentation site from the code itself.

Run by the mkdocs-gen-files plugin at every ``mkdocs build`` (see ``mkdocs.yml``), or directly as
``python docs/gen_pages.py OUT_DIR`` to write the pages to a folder; importing it writes nothing.
One page per registered architecture and weighting method (their docstrings, rendered by
mkdocstrings, plus the options and defaults read from the constructor), an index of datasets,
the presets, the CLI reference from the argparse parsers, and the navigation (SUMMARY.md, read by
mkdocs-literate-nav). Anything registered later appears without editing this file.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

#: argparse wraps help text at the terminal width; fix it so pages do not depend on the terminal
os.environ["COLUMNS"] = "100"

from mtlkit.catalog import description, presets  # noqa: E402
from mtlkit.registry import ARCHITECTURES, DATASETS, WEIGHTINGS  # noqa: E402

#: the site's navigation: (title, page) or (title, [children]); "@architectures" and "@weighting"
#: stand for the generated index page of that folder with one entry per registered class below it
NAV = [
    ("Home", "index.md"),
    ("Getting started", "getting-started.md"),
    ("Concepts", "concepts.md"),
    (
        "Guides",
        [
            ("Train on your own data", "own-data.md"),
            ("Use it in your own training loop", "training-loop.md"),
            ("Runs, presets and trackers", "usage.md"),
            ("Reproducing the paper", "reproducing.md"),
            ("Running a grid on a cluster", "cluster.md"),
            ("Scaling to GPUs", "scaling.md"),
            ("Visual Decathlon", "decathlon.md"),
        ],
    ),
    (
        "Reference",
        [
            ("Python API", "api.md"),
            ("Architectures", "@architectures"),
            ("Architectures, backbones and #P", "models.md"),
            ("Weighting methods", "@weighting"),
            ("Weighting methods compared", "methods.md"),
            ("Datasets", "datasets.md"),
            ("Built-in datasets in detail", "data.md"),
            ("Presets", "presets.md"),
            ("Command line", "cli.md"),
            ("How the pieces fit", "ARCHITECTURE.md"),
            ("Differences from LibMTL and the authors' code", "differences.md"),
            ("Development and dependencies", "development.md"),
            ("Benchmarks", "benchmarks.md"),
        ],
    ),
    (
        "Results",
        [
            ("Paper grid on the scenes (10 epochs)", "results/scenes_paper_cpu/report.md"),
            ("Paper grid on the scenes (30 epochs)", "results/scenes_paper_cpu_long/report.md"),
            ("Paper protocol, 3 seeds (tiny CPU size)", "results/scenes_paper_cpu_seeds/report.md"),
            ("Task complexity, 3 seeds (tiny CPU size)", "results/complexity_scenes_seeds/report.md"),
            ("Every architecture on resnet18_dilated (CPU size)", "results/scenes_resnet18_cpu/report.md"),
            ("Every weighting method with MTAN (CPU size)", "results/scenes_weighting_cpu/report.md"),
            ("Cross-stitch AlexNets on the scenes (CPU size)", "results/scenes_cross_stitch_cpu/report.md"),
            ("Cross-stitch on the scenes: what it shows", "results/scenes_cross_stitch_cpu/README.md"),
            ("Visual Decathlon code path", "results/decathlon_cpu/report.md"),
            ("NYUv2 normals from Kinect depth", "results/nyuv2_normals/README.md"),
        ],
    ),
    ("Changelog", "changelog.md"),
]
#: constructor arguments that are not user options (an architecture's backbone, pretrained and
#: align_corners are the keys model.backbone, model.pretrained and model.align_corners)
_NOT_OPTIONS = {"self", "tasks", "task_names", "width", "cfg", "backbone", "pretrained", "align_corners"}


def first_line(obj: object) -> str:
    """The first line of an object's docstring ('' when it has none)."""
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def cell(text: str) -> str:
    """Text made safe for a Markdown table cell (a bare ``|`` would start a new column)."""
    return text.replace("|", "\\|")


def options(cls: type) -> list[tuple[str, str]]:
    """(name, default) of every keyword option the class's constructor takes."""
    rows = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in _NOT_OPTIONS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = "required" if param.default is param.empty else f"`{param.default!r}`"
        rows.append((name, default))
    return rows


def path_of(cls: type) -> str:
    """The dotted import path mkdocstrings resolves."""
    return f"{cls.__module__}.{cls.__qualname__}"


def member_page(kind: str, name: str, cls: type, key: str, extra: list[str]) -> str:
    """A page for one registered class: how to select it, its docstring (summary once), options, paper."""
    lines = [f"# `{name}`", "", f"Select it with `{key}={name}`.", ""]
    lines += extra
    # the class docstring starts with the summary line the index shows: rendered once, here
    lines += [f"::: {path_of(cls)}", "    options:", "      show_root_heading: false", "      members: false", ""]
    opts = options(cls)
    lines += ["## Options", ""]
    if opts:
        prefix = "model.options" if kind == "architecture" else "weighting.options"
        lines += ["| option | default |", "|---|---|"]
        lines += [f"| `{prefix}.{opt}` | {default} |" for opt, default in opts]
        lines.append("")
    else:
        lines += ["It takes no options.", ""]
    module = sys.modules[cls.__module__]
    if inspect.getdoc(module):
        title = "Paper and module" if kind == "weighting method" else "Module"
        package = sys.modules[cls.__module__.rpartition(".")[0]]
        exported = getattr(package, cls.__name__, None) is cls
        public = f" (`from {package.__name__} import {cls.__name__}`)" if exported else ""
        lines += [
            f"## {title}",
            "",
            f"`{cls.__module__}`, class `{cls.__qualname__}`{public}.",
            "",
            f"::: {cls.__module__}",
            "    options:",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "      members: false",
            "",
        ]
    return "\n".join(lines)


def registry_pages(
    kind: str, folder: str, registry, key: str, extra: Callable[[type], list[str]]
) -> Iterator[tuple[str, str]]:
    """(path, text) of one page per registered entry and of the folder's index."""
    rows = []
    for name, cls in registry.items():
        yield f"{folder}/{name}.md", member_page(kind, name, cls, key, extra(cls))
        rows.append(f"| [`{name}`]({name}.md) | {cell(first_line(cls))} |")
    title = {"architecture": "Architectures", "weighting method": "Weighting methods"}[kind]
    intro = {
        "architecture": "Every architecture takes the task list of the dataset and a width multiplier "
        "(`model.width`); `mtlkit params --dataset nyuv2 --arch NAME` counts its parameters. "
        "Any architecture runs with any weighting method.",
        "weighting method": "Loss-level methods combine the K task losses into the scalar to back-propagate; "
        "gradient-level methods combine the K x D matrix of task gradients into the shared "
        "update (`weighting.mode` picks parameters or the shared representation).",
    }[kind]
    index = [f"# {title}", "", intro, "", f"| `{key}` | what |", "|---|---|", *rows, ""]
    yield f"{folder}/index.md", "\n".join(index)


def weighting_extra(cls: type) -> list[str]:
    """The kind line of a weighting page."""
    if getattr(cls, "needs_gradients", False):
        modes = "parameters or representation" if getattr(cls, "supports_representation", True) else "parameters"
        return [f"Kind: **gradient level** (`weighting.mode`: {modes}).", ""]
    return ["Kind: **loss level**.", ""]


def datasets_page() -> str:
    """An index of the registered datasets."""
    rows = [f"| `{name}` | {cell(first_line(cls))} | `{path_of(cls)}` |" for name, cls in DATASETS.items()]
    return "\n".join(
        [
            "# Datasets",
            "",
            "Select one with `dataset.name=NAME`.",
            "",
            "| `dataset.name` | what | class |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


def presets_page() -> str:
    """Every config and sweep preset with its description and full YAML."""
    lines = [
        "# Presets",
        "",
        "Named configs and sweeps shipped inside the package (`src/mtlkit/presets/`). Use the name "
        "wherever a file is expected: `mtlkit train demo`, `mtlkit sweep nyuv2_paper`. An existing "
        "file wins over a preset of the same name. `mtlkit config show NAME [key=value ...]` prints "
        "a config preset resolved, with every key.",
        "",
    ]
    for kind, title in (("config", "Config presets"), ("sweep", "Sweep presets")):
        lines += [f"## {title}", ""]
        for name, path in presets(kind).items():
            lines += [f"### `{name}`", "", description(path, kind), "", "```yaml", path.read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(full command, parser) for a parser and every sub-command below it, depth first."""
    yield prefix, parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{prefix} {name}")


def cli_page() -> str:
    """The CLI reference: the help of every command, as `mtlkit ... --help` prints it."""
    from mtlkit.cli.main import build_parser

    lines = [
        "# Command line",
        "",
        "Generated from the parsers: each section is what `--help` prints. Bad input is one line "
        "`mtlkit: error: ...` and exit code 2.",
        "",
    ]
    for command, parser in _subcommands(build_parser(), "mtlkit"):
        level = "#" * min(2 + command.count(" "), 4) if command != "mtlkit" else "##"
        lines += [f"{level} `{command}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def summary() -> str:
    """The navigation as the Markdown list mkdocs-literate-nav reads (SUMMARY.md)."""
    registries = {"@architectures": ARCHITECTURES, "@weighting": WEIGHTINGS}
    lines = []

    def walk(items: list, depth: int) -> None:
        pad = "    " * depth
        for title, target in items:
            if isinstance(target, list):
                lines.append(f"{pad}* {title}")
                walk(target, depth + 1)
            elif target in registries:
                folder = target[1:]
                lines.append(f"{pad}* [{title}]({folder}/index.md)")
                lines.extend(f"{pad}    * [`{name}`]({folder}/{name}.md)" for name in registries[target].names())
            else:
                lines.append(f"{pad}* [{title}]({target})")

    walk(NAV, 0)
    return "\n".join(lines) + "\n"


def pages() -> Iterator[tuple[str, str]]:
    """Every generated page as (path under docs/, markdown text)."""
    yield from registry_pages("architecture", "architectures", ARCHITECTURES, "model.arch", lambda cls: [])
    yield from registry_pages("weighting method", "weighting", WEIGHTINGS, "weighting.name", weighting_extra)
    yield "datasets.md", datasets_page()
    yield "presets.md", presets_page()
    yield "cli.md", cli_page()
    yield "changelog.md", (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    yield "SUMMARY.md", summary()


def write_with_gen_files() -> None:
    """Write the pages into the site being built (mkdocs-gen-files' virtual files)."""
    import mkdocs_gen_files

    for path, text in pages():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":  # mkdocs-gen-files runs this file under another name
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docs/gen_pages.py OUT_DIR")
    out = Path(sys.argv[1])
    for rel, text in pages():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    print(f"wrote {sum(1 for _ in pages())} pages to {out}")
elif __name__ == "<run_path>":  # the name runpy gives the script when mkdocs-gen-files runs it
    write_with_gen_files()
