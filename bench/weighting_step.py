"""Benchmark: time of one training step of MTAN for every weighting method, relative to ``equal``.

Each (method, gradient mode) gets its own MTAN (same initial weights), Adam optimiser and the
trainer's :class:`~mtlkit.train.step.StepRunner`; after a warm-up, rounds time one step of every
runner in a shuffled order (so load drift hits all methods alike), and the median per runner is
compared with ``equal``'s median in the same mode and run (the ratio of the minima, steadier on a
shared machine, is reported too). Loss-level methods ignore the mode (their step is the same);
they are timed in both columns as a noise floor.

    python bench/weighting_step.py                     # CPU-sized defaults
    python bench/weighting_step.py --width 0.25 --steps 20 --device cuda

Writes ``bench/results/weighting_step.json`` and prints a table. Targets (issue 4):
representation mode within 1.3x of equal; parameter mode well under K + 1 times equal.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.train.step import StepRunner
from mtlkit.weighting.gradients import decided_path, forget_gradient_paths, recorded_paths

MODES = ("parameters", "representation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (all have CPU-sized defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.125, help="MTAN channel multiplier")
    p.add_argument("--height", type=int, default=32, help="input height (pixels)")
    p.add_argument("--image-width", type=int, default=64, help="input width (pixels)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--classes", type=int, default=7, help="segmentation classes")
    p.add_argument("--steps", type=int, default=15, help="timed steps per runner (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per runner first")
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "weighting_step.json"))
    return p.parse_args(argv)


def make_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    """A random but valid batch for segmentation / depth / normal."""
    gen = torch.Generator().manual_seed(args.seed)
    b, h, w = args.batch_size, args.height, args.image_width
    batch = {
        "image": torch.randn(b, 3, h, w, generator=gen),
        "segmentation": torch.randint(0, args.classes, (b, h, w), generator=gen),
        "depth": torch.rand(b, 1, h, w, generator=gen) + 0.1,
        "normal": F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write the JSON file, print the table; returns the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tasks = [segmentation_task(args.classes), depth_task(), normal_task()]
    names = [t.name for t in tasks]
    methods = args.methods or WEIGHTINGS.names()
    if "equal" not in methods:
        methods = ["equal", *methods]
    torch.manual_seed(args.seed)
    base_model = build_model("mtan", tasks, width=args.width).to(device)
    batch = make_batch(args, device)

    runners: dict[tuple[str, str], StepRunner] = {}
    unsupported: dict[tuple[str, str], str] = {}
    for mode in args.modes:
        for name in methods:
            model = copy.deepcopy(base_model)
            method = WEIGHTINGS.get(name)(names).to(device)
            params = list(model.parameters()) + [p for p in method.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-4)
            try:
                runners[(name, mode)] = StepRunner(model, method, tasks, opt, mode)
            except ConfigError as err:
                unsupported[(name, mode)] = str(err)

    # Warm-up also lets per_task_gradients' "auto" strategy settle (per model type and mode).
    forget_gradient_paths()
    mode_keys: dict[str, set] = {}
    for mode in args.modes:
        seen = set(recorded_paths())
        for (_name, m), runner in runners.items():
            if m == mode:
                for _ in range(args.warmup):
                    runner(batch)
        mode_keys[mode] = set(recorded_paths()) - seen

    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    order = list(runners)
    rng = random.Random(args.seed)
    for _ in range(args.steps):
        rng.shuffle(order)
        for key in order:
            _sync(device)
            start = time.perf_counter()
            runners[key](batch)
            _sync(device)
            times[key].append(time.perf_counter() - start)

    rows = []
    for mode in args.modes:
        ref = statistics.median(times[("equal", mode)])
        ref_min = min(times[("equal", mode)])
        for name in methods:
            key = (name, mode)
            cls = WEIGHTINGS.get(name)
            kind = "gradient" if cls.needs_gradients else "loss"
            if key in unsupported:
                rows.append({"method": name, "kind": kind, "mode": mode, "supported": False,
                             "median_s": None, "ratio": None, "min_s": None, "ratio_min": None,
                             "note": unsupported[key]})
                continue
            med = statistics.median(times[key])
            best = min(times[key])
            rows.append({"method": name, "kind": kind, "mode": mode, "supported": True,
                         "median_s": med, "ratio": med / ref, "min_s": best, "ratio_min": best / ref_min,
                         "times_s": times[key]})
    result = {
        "benchmark": "weighting_step",
        "arch": "mtan",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "tasks": names,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "per_task_gradient_path": {m: sorted({decided_path(k) or recorded_paths()[k] for k in keys})
                                   for m, keys in mode_keys.items()},
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows, args.modes))
    print(f"per-task gradient path: {result['per_task_gradient_path']}; wrote {out}")
    return result


def format_table(rows: list[dict], modes: list[str]) -> str:
    """A fixed-width table: per method and mode, the median ms, its ratio to equal, and the ratio of minima."""
    by = {(r["method"], r["mode"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = f"{'method':<12} {'kind':<8}" + "".join(
        f" {m[:5] + ' median ms':>16} {'x equal':>8} {'(min)':>6}" for m in modes)
    lines = [head, "-" * len(head)]
    for name in methods:
        kind = by[(name, modes[0])]["kind"]
        cells = ""
        for m in modes:
            r = by[(name, m)]
            if not r["supported"]:
                cells += f" {'n/a':>16} {'':>8} {'':>6}"
            else:
                cells += f" {r['median_s'] * 1e3:>16.1f} {r['ratio']:>8.2f} {r['ratio_min']:>6.2f}"
        lines.append(f"{name:<12} {kind:<8}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
