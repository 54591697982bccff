"""The presets shipped inside the package: named run configs and sweeps that work from any folder.

``src/mtlkit/presets/NAME.yaml`` is the run config preset ``NAME`` and
``src/mtlkit/presets/sweeps/NAME.yaml`` the sweep preset ``NAME``. Wherever a command takes a config
or sweep file it also takes a preset name; an existing file wins over a preset of the same name.
A config preset's one-line description is the first paragraph of its leading comment (the lines
up to the first bare ``#``); a sweep's is its ``description:`` key.
"""

from __future__ import annotations

from pathlib import Path

from mtlkit.errors import ConfigError
from mtlkit.readers import read_yaml_file

#: the folder that holds the presets (inside the installed package)
PRESET_DIR = Path(__file__).resolve().parent / "presets"
#: the kinds of preset and their folders under :data:`PRESET_DIR`
KINDS = {"config": PRESET_DIR, "sweep": PRESET_DIR / "sweeps"}


def presets(kind: str = "config") -> dict[str, Path]:
    """Preset name -> YAML file, sorted by name, for ``kind`` ``"config"`` or ``"sweep"``."""
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r} (one of {', '.join(KINDS)})")
    folder = KINDS[kind]
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def leading_comment(path: Path) -> list[str]:
    """The lines of the comment block at the top of a YAML file, without their ``#`` marks."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def description(path: Path, kind: str = "config") -> str:
    """The one-line description of a preset file ('' when it has none)."""
    if kind == "sweep":
        data = read_yaml_file(path) or {}
        text = data.get("description") if isinstance(data, dict) else None
        return " ".join(str(text).split()) if text else ""
    lines = leading_comment(path)
    first = lines[: lines.index("")] if "" in lines else lines
    return " ".join(first)


def resolve(name_or_path: str | Path, kind: str = "config") -> Path:
    """The file for a path or a preset name: an existing file first, then the preset of that name.

    Anything else is a :class:`ConfigError` naming the argument and the presets there are.
    """
    path = Path(name_or_path)
    if path.is_file() or path.is_dir():  # a folder: load_config / read_yaml says it is one
        return path
    found = presets(kind)
    text = str(name_or_path)
    if text in found:
        return found[text]
    what = "sweep file" if kind == "sweep" else "config file"
    if path.stem in found:
        raise ConfigError(f"{text}: {what} not found (did you mean the {kind} preset `{path.stem}`?)")
    other = "sweep" if kind == "config" else "config"
    if text in presets(other):
        raise ConfigError(f"{text}: not a {kind} preset but a {other} preset (`mtlkit list` shows which is which)")
    names = ", ".join(found) or "none"
    raise ConfigError(f"{text}: {what} not found, nor a {kind} preset of this name ({kind} presets: {names})")
