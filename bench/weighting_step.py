"""Benchmark: time and peak memory of one training step of MTAN for every weighting method, relative to ``equal``.

Each (method, gradient mode) gets its own MTAN (same initial weights), Adam optimiser and the
trainer's :class:`~mtlkit.train.step.StepRunner`; after a warm-up, rounds time one step of every
runner in a shuffled order (so load drift hits all methods alike), and the median per runner is
compared with ``equal``'s median in the same mode and run (the ratio of the minima, steadier on a
shared machine, is reported too). Loss-level methods ignore the mode (their step is the same);
they are timed in both columns as a noise floor.

Peak memory: the most bytes the torch allocator held during one step beyond what it held when
the step began, from the torch profiler's memory events (``profile_memory=True``: every CPU
allocation and free of torch tensors; tracemalloc would miss them), one profiled step per runner
after the timed rounds; on CUDA, ``torch.cuda.max_memory_allocated`` over one step.
``--tasks 3 10``: K = 3 (segmentation, depth, normals) and K = 10 (those plus 7 more depth heads).
``gramian`` rows: methods that only need the K x K Gramian run the Gramian-only path
(:func:`~mtlkit.weighting.gradients.gramian_blockwise` over parameter / feature blocks of at most
``--block`` elements, then one backward of sum_k w_k L_k), which never holds the K x D matrix.

    python bench/weighting_step.py                     # CPU-sized defaults
    python bench/weighting_step.py --width 0.25 --steps 20 --device cuda

Writes ``bench/results/weighting_step.json`` and prints a table. Targets (issue 14): gradient
methods within 1.4x of equal's step time in representation mode; peak memory within equal's plus
one K x D float32 matrix plus 10 %.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mtlkit.balance import FeatureCut
from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import Task, depth_task, normal_task, segmentation_task
from mtlkit.train.step import StepRunner
from mtlkit.weighting._common import GramianWeighting
from mtlkit.weighting.gradients import (
    decided_path,
    forget_gradient_paths,
    gramian_blockwise,
    recorded_paths,
    weighted_backward,
)

MODES = ("parameters", "representation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (all have CPU-sized defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.125, help="MTAN channel multiplier")
    p.add_argument("--height", type=int, default=32, help="input height (pixels)")
    p.add_argument("--image-width", type=int, default=64, help="input width (pixels)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--classes", type=int, default=7, help="segmentation classes")
    p.add_argument("--steps", type=int, default=15, help="timed steps per runner (median); 0: memory only")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per runner first")
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--tasks", nargs="*", type=int, default=[3, 10], choices=[3, 10], help="numbers of tasks K")
    p.add_argument("--block", type=int, default=1 << 16, help="largest block (elements) of the Gramian-only path")
    p.add_argument("--no-gramian", action="store_true", help="skip the Gramian-only rows")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "weighting_step.json"))
    return p.parse_args(argv)


def make_tasks(k: int, classes: int) -> list[Task]:
    """K = 3: segmentation, depth, normals; K = 10: those and 7 more depth heads."""
    tasks = [segmentation_task(classes), depth_task(), normal_task()]
    return tasks + [depth_task(f"depth{i}") for i in range(k - 3)]


def make_batch(args: argparse.Namespace, tasks: list[Task], device: torch.device) -> dict[str, torch.Tensor]:
    """A random but valid batch for the tasks."""
    gen = torch.Generator().manual_seed(args.seed)
    b, h, w = args.batch_size, args.height, args.image_width
    batch = {
        "image": torch.randn(b, 3, h, w, generator=gen),
        "segmentation": torch.randint(0, args.classes, (b, h, w), generator=gen),
        "normal": F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1),
    }
    for t in tasks:
        if t.name.startswith("depth"):
            batch[t.name] = torch.rand(b, 1, h, w, generator=gen) + 0.1
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GramianOnlyStep:
    """One training step of a Gramian-only method without the K x D matrix (see the module docstring).

    Task-specific parameters get w_k dL_k/dtheta (one weighted backward), not the step's unweighted
    own-task gradient: a benchmark of the memory path, not a replacement for :class:`StepRunner`.
    """

    def __init__(self, model, method: GramianWeighting, tasks: list[Task], optimizer, mode: str, block: int) -> None:
        self.model, self.method, self.tasks, self.optimizer, self.mode, self.block = (
            model,
            method,
            tasks,
            optimizer,
            mode,
            block,
        )

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        cut = None
        if self.mode == "representation":
            # decode reads detached copies: the Gramian is of partial derivatives (MTAN's tensors chain)
            cut = FeatureCut(self.model.encode(batch["image"]))
            preds = self.model.decode(cut)
            inputs = list(cut)
        else:
            preds = self.model(batch["image"])
            inputs = [p for p in self.model.shared_parameters() if p.requires_grad]
        losses = [t.loss(preds[t.name], batch[t.name]) for t in self.tasks]
        g = gramian_blockwise(losses, inputs, self.block, retain_graph=True)
        w = self.method.gramian_weights(g, torch.stack([x.detach() for x in losses]).double().cpu())
        self.method.last_weights = w.float()
        weighted_backward(losses, w)
        if cut is not None:  # the copies now hold sum_k w_k dL_k/dcopy: one backward through the encoder
            torch.autograd.backward(cut.sources, [c.grad for c in cut])
        self.optimizer.step()
        return torch.stack([x.detach() for x in losses])


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes the torch allocator held during ``fn()`` beyond what it held at the start."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0
    # "Total Allocated" is the profiler's running count, not reset between sessions: measure from
    # its value before the step's first event (frees of blocks allocated before the step are not
    # recorded, so this can only over-estimate the peak)
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in mem) - start)


def build_runners(args: argparse.Namespace, k: int, device: torch.device, methods: list[str]):
    """(runners, unsupported, tasks, batch, D per mode) for K tasks."""
    tasks = make_tasks(k, args.classes)
    names = [t.name for t in tasks]
    torch.manual_seed(args.seed)
    base_model = build_model("mtan", tasks, width=args.width).to(device)
    batch = make_batch(args, tasks, device)
    dims = {
        "parameters": sum(p.numel() for p in base_model.shared_parameters()),
        "representation": sum(r.numel() for r in base_model.encode(batch["image"])),
    }
    runners, unsupported = {}, {}
    for mode in args.modes:
        for name in methods:
            variants = [("step", False)]
            if not args.no_gramian and issubclass(WEIGHTINGS.get(name), GramianWeighting):
                variants.append(("gramian", True))
            for path, gram in variants:
                model = copy.deepcopy(base_model)
                try:
                    method = WEIGHTINGS.get(name)(names).to(device)
                except ConfigError as err:
                    unsupported[(name, mode, path)] = str(err)
                    continue
                params = list(model.parameters()) + [p for p in method.parameters() if p.requires_grad]
                opt = torch.optim.Adam(params, lr=1e-4)
                try:
                    if gram:
                        if mode == "representation" and not method.supports_representation:
                            raise ConfigError(f"{name}: parameter mode only")
                        runners[(name, mode, path)] = GramianOnlyStep(model, method, tasks, opt, mode, args.block)
                    else:
                        runners[(name, mode, path)] = StepRunner(model, method, tasks, opt, mode)
                except ConfigError as err:
                    unsupported[(name, mode, path)] = str(err)
    return runners, unsupported, batch, dims


def run_k(args: argparse.Namespace, k: int, device: torch.device, methods: list[str]) -> tuple[list[dict], dict]:
    """Time and measure every runner for K tasks; rows relative to equal (same K, mode)."""
    runners, unsupported, batch, dims = build_runners(args, k, device, methods)
    forget_gradient_paths()
    for runner in runners.values():
        for _ in range(args.warmup):
            runner(batch)
    times: dict[tuple, list[float]] = {key: [] for key in runners}
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
    memory = {key: peak_bytes(lambda r=runner: r(batch), device) for key, runner in runners.items()}
    rows = []
    for mode in args.modes:
        ref_t = statistics.median(times[("equal", mode, "step")]) if args.steps else None
        ref_m = memory[("equal", mode, "step")]
        kd = k * dims[mode] * 4
        for key in sorted(
            {key for key in list(runners) + list(unsupported) if key[1] == mode},
            key=lambda key: (methods.index(key[0]), key[2]),
        ):
            name, _, path = key
            kind = "gradient" if WEIGHTINGS.get(name).needs_gradients else "loss"
            if key in unsupported:
                rows.append(
                    {
                        "method": name,
                        "kind": kind,
                        "mode": mode,
                        "path": path,
                        "tasks": k,
                        "supported": False,
                        "note": unsupported[key],
                    }
                )
                continue
            med = statistics.median(times[key]) if times[key] else None
            rows.append(
                {
                    "method": name,
                    "kind": kind,
                    "mode": mode,
                    "path": path,
                    "tasks": k,
                    "supported": True,
                    "median_s": med,
                    "ratio": med / ref_t if med is not None else None,
                    "peak_bytes": memory[key],
                    "memory_ratio": memory[key] / max(ref_m, 1),
                    "kd_bytes": kd,
                    "within_memory_target": memory[key] <= 1.1 * (ref_m + kd),
                    "times_s": times[key],
                }
            )
    return rows, dims


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write the JSON file, print the table; returns the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    methods = args.methods or WEIGHTINGS.names()
    methods = [m for m in methods if not WEIGHTINGS.get(m).needs_meta_step]  # meta steps run outside the step
    if "equal" not in methods:
        methods = ["equal", *methods]
    rows, dims = [], {}
    for k in args.tasks:
        k_rows, dims[k] = run_k(args, k, device, methods)
        rows += k_rows
    result = {
        "benchmark": "weighting_step",
        "arch": "mtan",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "memory": "peak bytes the torch allocator held during one step beyond its start "
        + ("(torch.cuda.max_memory_allocated)" if device.type == "cuda" else "(torch profiler memory events, CPU)"),
        "shared_dims": {str(k): v for k, v in dims.items()},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "per_task_gradient_paths": sorted({str(decided_path(k) or p) for k, p in recorded_paths().items()}),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(rows))
    print(f"wrote {out}")
    return result


def format_table(rows: list[dict]) -> str:
    """A markdown table: per method, path, K and mode, the time and peak memory relative to equal."""
    lines = [
        "| method | kind | path | K | mode | step ms | x equal | peak MiB | x equal | <= equal + KD + 10 % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["supported"]:
            lines.append(f"| {r['method']} | {r['kind']} | {r['path']} | {r['tasks']} | {r['mode']} | n/a | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['path']} | {r['tasks']} | {r['mode']} | "
            + (f"{r['median_s'] * 1e3:.1f} | {r['ratio']:.2f} | " if r["median_s"] is not None else "- | - | ")
            + f"{r['peak_bytes'] / 2**20:.1f} | "
            f"{r['memory_ratio']:.2f} | {'yes' if r['within_memory_target'] else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
