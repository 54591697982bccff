"""The decathlon's commands: ``mtlkit decathlon-score`` and ``mtlkit evaluate --refresh-bn``.

The ``mtlkit`` command line adds them through :func:`register`, as it does the command groups of
``mtlkit.cli`` (this package is a plugin, ``mtlkit.registry.PLUGINS``).

``decathlon-score``: the Visual Decathlon score of per-domain test accuracies. Accuracies (percent)
come from ``--acc DOMAIN=ACC ...`` and/or ``--json FILE``: either a mapping ``{"domain": accuracy}``
or a run's ``results.json`` / ``eval-*.json`` (keys ``<domain>/accuracy``, taken from ``final`` or
``best`` of a results file). Baselines default to the shipped fine-tuned accuracies;
``--baselines FILE`` (a ``{"domain": accuracy}`` JSON) replaces them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mtlkit.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from mtlkit.config import Config
    from mtlkit.data.base import DatasetBuilder
    from mtlkit.tasks import Task


def _read_json(path: str) -> object:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{p}: malformed JSON (line {err.lineno} column {err.colno}: {err.msg})") from None


def accuracies_from_json(data: object, source: str, which: str = "final") -> dict[str, float]:
    """Domain accuracies from a plain mapping, an evaluation file or a run's results.json."""
    if isinstance(data, dict) and isinstance(data.get(which), dict):
        data = data[which]
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of domain accuracies")
    suffixed = {k[: -len("/accuracy")]: v for k, v in data.items() if k.endswith("/accuracy")}
    chosen = suffixed or {k: v for k, v in data.items() if "/" not in k}
    if not chosen:
        raise ConfigError(f"{source}: no domain accuracies found (expected 'domain': acc or 'domain/accuracy': acc)")
    out = {}
    for k, v in chosen.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{source}: accuracy of {k!r} is not a number ({v!r})")
        out[k] = float(v)
    return out


def parse_acc(items: list[str]) -> dict[str, float]:
    """``DOMAIN=ACC`` strings as a dict; a malformed item is a ConfigError naming it."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--acc {item!r}: expected DOMAIN=ACCURACY (e.g. imagenet12=60.5)")
        try:
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--acc {item!r}: {value!r} is not a number") from None
    return out


def cmd_decathlon_score(args: argparse.Namespace) -> int:
    """Print the per-domain and total decathlon scores (or their JSON with --as-json)."""
    from mtlkit.decathlon.score import default_baselines, format_table, score_table

    accuracies: dict[str, float] = {}
    if args.json:
        accuracies.update(accuracies_from_json(_read_json(args.json), args.json, args.which))
    accuracies.update(parse_acc(args.acc or []))
    if not accuracies:
        raise ConfigError("decathlon-score needs accuracies: --acc DOMAIN=ACC ... or --json FILE")
    baselines = None
    if args.baselines:
        baselines = accuracies_from_json(_read_json(args.baselines), args.baselines)
    rows = score_table(accuracies, baselines)
    domains = list(baselines if baselines is not None else default_baselines())
    missing = [d for d in domains if d not in accuracies]
    if args.as_json:
        print(
            json.dumps(
                {"total": sum(r.score for r in rows), "domains": {r.domain: r.score for r in rows}, "missing": missing},
                indent=2,
            )
        )
    else:
        print(format_table(rows))
        if missing:
            print(
                f"note: the total covers {len(rows)} of {len(domains)} domains; no accuracy for "
                f"{', '.join(missing)} (they score 0, so it is not comparable with a {len(domains)}-domain total)"
            )
    return 0


class RefreshBN:
    """``mtlkit evaluate --refresh-bn``: each domain tested right after refitting the BatchNorm statistics.

    See :func:`mtlkit.decathlon.evaluate.evaluate_refresh_bn`; the metrics go to
    ``eval-<split>-<checkpoint>-refresh-bn.json``.
    """

    suffix = "-refresh-bn"

    def __call__(
        self,
        model: nn.Module,
        tasks: list[Task],
        builder: DatasetBuilder,
        cfg: Config,
        device: torch.device,
        split: str,
    ) -> dict[str, float]:
        from mtlkit.decathlon.evaluate import evaluate_refresh_bn

        return evaluate_refresh_bn(model, tasks, builder, cfg, device, split)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``decathlon-score`` command and ``evaluate``'s ``--refresh-bn`` option."""
    evaluate = subparsers.choices.get("evaluate")  # the core's command; absent from a parser built without it
    if evaluate is not None:
        evaluate.add_argument(
            "--refresh-bn",
            dest="evaluation",
            action="store_const",
            const=RefreshBN(),
            default=None,
            help="decathlon: refit the BatchNorm statistics on each domain's training split (one "
            "epoch of training-mode forward passes) before testing it, as the MTAN evaluation "
            "script does",
        )
    p = subparsers.add_parser(
        "decathlon-score",
        help="Visual Decathlon score of per-domain test accuracies",
        description="Decathlon score S = sum_d 1000 * max(0, 1 - E_d / (2 E_d^base))^2 of test errors E_d "
        "(E = 100 - accuracy), against the fine-tuned baselines: 250 per domain at the baseline, 1000 at zero "
        "error. Example: mtlkit decathlon-score --acc imagenet12=63.9 aircraft=61.8",
    )
    p.add_argument(
        "--acc", nargs="+", action="extend", metavar="DOMAIN=ACC", help="test accuracy in percent per domain"
    )
    p.add_argument("--json", metavar="FILE", help="accuracies: {domain: acc}, an eval-*.json or a run's results.json")
    p.add_argument(
        "--which", choices=["final", "best"], default="final", help="section of a results.json (default final)"
    )
    p.add_argument(
        "--baselines", metavar="FILE", help="baseline accuracies {domain: acc} (default: the shipped Finetune row)"
    )
    p.add_argument("--as-json", action="store_true", help="print {total, domains} as JSON instead of a table")
    p.set_defaults(func=cmd_decathlon_score)
