"""Reading the files users and runs hand to mtlkit: UTF-8 text and YAML that cannot take the machine.

Every YAML file mtlkit reads (configs, sweeps, ``tasks.yaml``, a run's ``config.yaml``) goes
through :func:`load_yaml`: PyYAML's safe loader plus two rules. A key given twice in one mapping
is an error (YAML's "last one wins" hides typos such as two ``lr:`` lines); merge keys
(``<<: *defaults``) still override as YAML defines. Aliases are allowed, but the document they
expand to is bounded (:data:`MAX_YAML_NODES`): a "billion laughs" file of 1 KB whose anchors
expand to 9^10 strings is refused at load time, before anything walks, validates or formats the
expanded value. Problems are :class:`~mtlkit.errors.ConfigError` lines naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtlkit.errors import ConfigError, shorten

#: the most nodes (scalars, lists, mappings) a YAML document may expand to, aliases counted each time
#: they are used; real configs and sweeps have a few hundred
MAX_YAML_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys (merge keys excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeConstructor names it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {shorten(key)} (YAML keeps only the last; give each key once)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes of ``node`` with every alias expanded, counted up to just past ``limit``."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError("an anchor refers to itself (a recursive YAML structure)")
        total = 1
        if isinstance(n, (yaml.SequenceNode, yaml.MappingNode)):
            active.add(key)
            children = n.value if isinstance(n, yaml.SequenceNode) else [c for pair in n.value for c in pair]
            for child in children:
                total += size(child)
                if total > limit:
                    break
            active.discard(key)
        sizes[key] = total
        return total

    return size(node)


def load_yaml(text: str, source: str | Path) -> Any:
    """The value of one YAML document ``text`` (None when empty); problems name ``source``."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            expanded = _expanded_size(node, MAX_YAML_NODES)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except RecursionError:
            raise ConfigError(f"{source}: YAML nested too deeply") from None
        if expanded > MAX_YAML_NODES:
            raise ConfigError(
                f"{source}: YAML expands to more than {MAX_YAML_NODES:,} values (aliases of aliases?); refused"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where} invalid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``; bytes that are not UTF-8 or an unreadable file are a ConfigError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def read_yaml_file(path: str | Path) -> Any:
    """The YAML value in the file ``path`` (UTF-8, bounded, no duplicate keys)."""
    return load_yaml(read_text(path), path)
