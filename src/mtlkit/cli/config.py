"""`mtlkit config show CONFIG|PRESET [key=value ...]`: print a resolved config as YAML to copy and edit."""

from __future__ import annotations

import argparse

import yaml

from mtlkit.catalog import description, resolve
from mtlkit.config import load_config


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``config`` command group (``config show``) to the ``mtlkit`` parser."""
    p = subparsers.add_parser(
        "config",
        help="show a config or preset resolved with overrides",
        description="Inspect run configs. `mtlkit config show demo train.epochs=2 > my.yaml` "
        "writes a file that `mtlkit train my.yaml` runs.",
    )
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser(
        "show",
        help="print the resolved YAML (every key, defaults filled in)",
        description="Print CONFIG (a YAML file, or a preset name: `mtlkit list`; an existing "
        "file wins over a preset of the same name) after the overrides, validated, with every "
        "key and its default.",
    )
    s.add_argument("config", help="YAML config file or preset name")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=2")
    s.set_defaults(func=show)
    return p


def show(args: argparse.Namespace) -> int:
    """Print the validated config as YAML, headed by a comment naming its source and overrides."""
    path = resolve(args.config)
    cfg = load_config(path, list(args.overrides))
    about = description(path)
    print(f"# {args.config}" + (f": {about}" if about else ""))
    if args.overrides:
        print(f"# overrides: {' '.join(args.overrides)}")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
