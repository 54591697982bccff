"""The ``mtlkit`` command line: train, evaluate, list, params, plus the command groups of other modules.

Every user-fixable error (bad config, missing data, bad checkpoint) is printed as one line
``mtlkit: error: ...`` with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import warnings
from pathlib import Path

from mtlkit import __version__
from mtlkit._deprecation import MtlkitDeprecationWarning
from mtlkit.errors import MtlkitError, warn
from mtlkit.registry import PLUGINS

#: modules that add command groups through ``register(subparsers)``: the core's under mtlkit.cli, then
#: each plugin's ``cli`` (``registry.PLUGINS``); a module that is not installed is skipped
COMMAND_MODULES = [
    *(f"mtlkit.cli.{name}" for name in ("data", "sweep", "report", "config")),
    *(f"{plugin}.cli" for plugin in PLUGINS),
]


def _cmd_train(args: argparse.Namespace) -> int:
    from mtlkit.catalog import resolve
    from mtlkit.config import load_config
    from mtlkit.train.trainer import train

    if args.resume:
        if args.config or args.overrides:
            raise MtlkitError("--resume continues a run with its saved config; give no CONFIG or overrides")
        run = train(resume=args.resume)
    else:
        if args.config is None:
            raise MtlkitError("train needs CONFIG.yaml or a preset name (or --resume RUN_DIR)")
        overrides = list(args.overrides)
        if args.config.endswith(".yaml") or args.config.endswith(".yml") or "=" not in args.config:
            cfg = load_config(resolve(args.config), overrides)
        else:
            cfg = load_config(None, [args.config, *overrides])
        run = train(cfg, run_dir=args.run_dir)
    print(f"run folder: {run}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint with the run's loader, or with ``args.evaluation`` where a command module set one.

    A command module may add a flag to ``evaluate`` that stores an evaluation object in
    ``args.evaluation``: ``evaluation(model, tasks, builder, cfg, device, split) -> metrics`` replaces
    the default pass and ``evaluation.suffix`` names the output file (``eval-<split>-<checkpoint><suffix>``).
    """
    import torch

    from mtlkit.io import atomic_write_json
    from mtlkit.metrics.protocols import describe
    from mtlkit.train.evaluate import evaluate, protocol_args
    from mtlkit.train.runtime import select_device
    from mtlkit.train.trainer import load_run, make_loader

    device = select_device(args.device)
    cfg, model, tasks, builder = load_run(args.run_dir, checkpoint=args.checkpoint, device=str(device))
    if args.split not in builder.splits:
        raise MtlkitError(f"--split {args.split!r}: dataset {cfg.dataset.name!r} has {', '.join(builder.splits)}")
    if args.protocol is not None:
        cfg.eval.protocol = args.protocol
    protocol = protocol_args(cfg)
    custom = getattr(args, "evaluation", None)
    if custom is not None:
        metrics = custom(model.to(device), tasks, builder, cfg, device, args.split)
    else:
        ds = builder.dataset(args.split, train=False)
        with torch.no_grad():
            metrics = evaluate(
                model.to(device),
                tasks,
                make_loader(builder, ds, cfg, train=False, epoch=0),
                device,
                progress=True,
                **protocol,
            )
        print(f"protocol: {describe(protocol['protocol'], protocol['protocol_batch'])}")
    suffix = custom.suffix if custom is not None else ""
    suffix += f"-{args.protocol}" if args.protocol is not None else ""
    out = Path(args.run_dir) / f"eval-{args.split}-{args.checkpoint}{suffix}.json"
    record = (
        {} if custom is not None else {"protocol": protocol["protocol"], "protocol_batch": protocol["protocol_batch"]}
    )
    atomic_write_json(out, {**metrics, **record})
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        warn(f"non-finite {', '.join(bad)} (written as null in {out}): the checkpoint's predictions diverged")
    for k, v in metrics.items():
        print(f"{k:28s} {v:.4f}")
    print(f"written: {out}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from mtlkit.catalog import description, presets
    from mtlkit.models.backbones import BACKBONES, head_kind
    from mtlkit.registry import ARCHITECTURES, DATASETS, TASK_KINDS, WEIGHTINGS

    def doc(obj: object) -> str:
        return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""

    table = {
        "architectures": {n: doc(c) for n, c in ARCHITECTURES.items()},
        "weightings": {n: doc(c) for n, c in WEIGHTINGS.items()},
        "datasets": {n: doc(c) for n, c in DATASETS.items()},
        "task kinds": {n: doc(c) for n, c in TASK_KINDS.items()},
        "backbones": {n: f"{doc(c)} [heads: {head_kind(n)}]" for n, c in BACKBONES.items()},
        "presets": {n: description(p) for n, p in presets("config").items()},
        "sweep presets": {n: description(p, "sweep") for n, p in presets("sweep").items()},
    }
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for section, items in table.items():
        print(f"{section}:")
        for n, d in items.items():
            print(f"  {n:21s} {d}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from mtlkit.models.params import parameter_report

    report = parameter_report(args.dataset, args.arch, args.width, num_classes=args.num_classes, backbone=args.backbone)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ratio = report.get("ratio")
        rel = (
            f"{ratio:.3f}x one single-task network ({report['single_task_params']:,.0f})"
            if ratio is not None
            else "no single-task reference for this architecture"
        )
        on = f" ({report['backbone']})" if report["backbone"] else ""
        print(
            f"{report['arch']}{on} on {report['dataset']} ({', '.join(report['tasks'])}), width {report['width']}: "
            f"{report['params']:,} parameters, {rel}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtlkit", description="Multi-task learning for dense prediction.")
    p.add_argument("--version", action="version", version=f"mtlkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="train a model from a YAML config or a preset",
        description="Train from CONFIG.yaml or a preset name (`mtlkit list` shows the presets) "
        "with dotted overrides, e.g. `mtlkit train demo optim.lr=1e-3 model.arch=mtan "
        "weighting.name=dwa`. An existing file wins over a preset of the same name.",
    )
    t.add_argument("config", nargs="?", help="YAML config file, or a preset name (a file wins over a preset)")
    t.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys: train.epochs=5)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--run-dir", help="write into this folder instead of <out_dir>/<name>-<timestamp>")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="re-evaluate a run's checkpoint",
        description="Evaluate the best (or last) checkpoint of RUN_DIR on a split; writes "
        "RUN_DIR/eval-<split>-<checkpoint>.json.",
    )
    e.add_argument("run_dir", help="run folder written by `mtlkit train`")
    e.add_argument("--split", default="val", help="dataset split (default: val)")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint (default best)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    e.add_argument(
        "--protocol",
        choices=["pooled", "mtan_official", "mtan_paper"],
        default=None,
        help="evaluation protocol (default: the run's eval.protocol); with it the output is "
        "eval-<split>-<checkpoint>-<protocol>.json",
    )
    e.set_defaults(func=_cmd_evaluate)

    ls = sub.add_parser(
        "list", help="list architectures, weighting methods, datasets, task kinds, backbones and presets"
    )
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_list)

    pa = sub.add_parser(
        "params",
        help="parameter count and ratio to one single-task network (#P)",
        description="Parameter count of an architecture on a dataset's task set, and its ratio "
        "to one single-task network of the same backbone and width (the MTAN paper's #P).",
    )
    pa.add_argument("--dataset", required=True, help="dataset whose tasks size the heads (nyuv2, cityscapes, ...)")
    pa.add_argument("--arch", required=True, help="architecture name (see `mtlkit list`)")
    pa.add_argument("--backbone", default=None, help="segnet, resnet{18,34,50}_dilated (default: the arch's own)")
    pa.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    pa.add_argument("--num-classes", type=int, default=None, help="segmentation classes (dataset default)")
    pa.add_argument("--json", action="store_true", help="machine-readable output")
    pa.set_defaults(func=_cmd_params)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise  # a module it imports is missing: a real error
            continue
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():  # restored on return: main() may run inside another program
        warnings.simplefilter("default", MtlkitDeprecationWarning)  # hidden by Python's defaults outside __main__
        show = warnings.showwarning
        warnings.showwarning = lambda message, category, *rest: (
            print(f"mtlkit: warning: {message}", file=sys.stderr)
            if issubclass(category, MtlkitDeprecationWarning)
            else show(message, category, *rest)
        )
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MtlkitError as err:
        print(f"mtlkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtlkit: interrupted (the last finished epoch is checkpointed; resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
