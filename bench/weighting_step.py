"""Benchmark: one MTAN training step per gradient-balancing variant, against ``equal`` and TorchJD 0.18.

What is timed, in one process, for K = 3 and K = 10 tasks (segmentation, depth, normals, then more
depth heads), every variant started from the same weights (a deep copy) with its own Adam:

* ``equal``: one backward of the summed losses (the yardstick of every ratio);
* ``k+1 backwards`` (parameter mode): K ``autograd.grad`` calls of each task loss w.r.t. the shared
  parameters and one backward of the sum: the cost of K + 1 backward passes through the shared part,
  the floor an exact non-batched parameter-mode step is compared with ("within 10 % of K+1");
* ``mtlkit``: the trainer's :class:`~mtlkit.train.step.StepRunner` for each method, in each
  ``weighting.mode`` and with each ``weighting.grad_path``. The paths are read from the config's
  annotation (``typing.get_args`` of ``WeightingConfig.grad_path``), so a new path is benchmarked
  without editing this file; a path a method or mode refuses is listed as n/a with the reason;
* ``torchjd`` (0.18, the ``bench`` extra): for the methods both libraries have (``PEERS``), in
  parameter mode ``autojac.mtl_backward(features=encode's tensors) + jac_to_grad`` (MTAN's features
  are computed from each other, so this double-counts paths: the row's ``grad_rel_diff`` says by
  how much), ``autojac.backward(inputs=shared + task-specific) + jac_to_grad`` (shared: the
  aggregator, task-specific: Sum), and the autogram ``Engine`` over the shared trunk
  (``batch_dim=None``: MTAN has BatchNorm); in representation mode ``autojac.backward`` w.r.t. the
  detached copies of ``encode``'s tensors (:class:`~mtlkit.balance.FeatureCut`), the aggregate
  back-propagated once through the encoder, as mtlkit does.
* family ``mtan_nobn`` (parameter mode): the same MTAN with every BatchNorm replaced by
  ``GroupNorm(1, C)`` (per-sample statistics), so TorchJD's autogram can use ``batch_dim=0``: the
  Gramian of the B x K per-example losses, summed over example pairs / B^2, is the K x K Gramian of
  the batch-mean losses (the random targets are all valid, so every example's loss has the same
  weight); ``equal``, ``k+1 backwards`` and mtlkit's paths run on it too.

After a warm-up (its first step from the shared weights gives each variant's shared-parameter
gradient, compared with the method's reference: mtlkit's ``loop`` path, TorchJD's ``autojac.backward``),
each round times one step of every variant of a family in a shuffled order, so load drift hits all
alike; per variant: the median step, the median over rounds of time / equal's time in the same round
(``ratio``), and for parameter mode the same against ``k+1 backwards`` (``ratio_k1``).

Peak memory: the most bytes the torch allocator held during one step beyond what it held at the
step's start; CPU: from the torch profiler's memory events (``profile_memory=True``: every
allocation and free of a torch tensor; frees of blocks allocated before the step are not
recorded, which can only over-estimate, alike for every variant), CUDA:
``torch.cuda.max_memory_allocated``. One profiled step per variant, after the timed rounds.

Targets (issue 26; checked here, never in timed tests): representation mode at most 1.2x equal at
K = 3 and 1.5x at K = 10; parameter mode at most the best TorchJD ratio of the same method and
within 10 % of ``k+1 backwards``; peak memory at most 1.1 (equal + K x D) on a K x D path, 1.1 equal
on a Gramian path (a path whose name contains ``gram``).

    python bench/weighting_step.py --quick --out /tmp/w.json     # about a minute: every code path
    python bench/weighting_step.py                               # the full run (~15 min, 2 cores, alone)

Writes the JSON (``--out``; default ``bench/results/weighting_step.json``), prints and writes next to
it the Markdown table (``.md``) that docs/benchmarks.md shows. Records ``uptime``'s load before and
after, the thread count, torch's and TorchJD's versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from mtlkit.balance import FeatureCut
from mtlkit.config import WeightingConfig
from mtlkit.errors import MtlkitError
from mtlkit.io import atomic_write_json, atomic_write_text
from mtlkit.models import build_model
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import Task, depth_task, normal_task, segmentation_task
from mtlkit.train.step import StepRunner

MODES = ("parameters", "representation")
#: methods both libraries have: mtlkit name -> (TorchJD aggregator, TorchJD weighting (autogram) or
#: None), built with mtlkit's default options where the two share them
PEERS: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {}
DEFAULT_METHODS = ["upgrad", "mgda", "dualproj", "pcgrad", "cagrad", "imtl_g"]
QUICK_METHODS = ["upgrad", "pcgrad"]
#: a TorchJD variant whose first gradient is further than this (relative) from autojac.backward's does
#: not compute the method's update (mtl_backward on MTAN's chained features) and is not a target
EXACT = 1e-3


def grad_paths() -> list[str]:
    """Every ``weighting.grad_path`` the config accepts (its Literal), in declaration order."""
    return list(typing.get_args(WeightingConfig.model_fields["grad_path"].annotation))


def is_gramian_path(path: str) -> bool:
    """A path that never holds the K x D matrix (memory target: equal + 10 %)."""
    return "gram" in path


def _peers() -> dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]]:
    """``PEERS``, filled on first use (TorchJD is the bench extra); {} without TorchJD."""
    if PEERS:
        return PEERS
    try:
        import torchjd.aggregation as tj
    except ImportError:
        return {}
    PEERS.update(
        {
            "upgrad": (tj.UPGrad, tj.UPGradWeighting),
            "mgda": (tj.MGDA, tj.MGDAWeighting),
            "dualproj": (tj.DualProj, tj.DualProjWeighting),
            "pcgrad": (tj.PCGrad, tj.PCGradWeighting),
            "cagrad": (lambda: tj.CAGrad(c=0.4), lambda: tj.CAGradWeighting(c=0.4)),
            "imtl_g": (tj.IMTLG, tj.IMTLGWeighting),
            "aligned_mtl": (tj.AlignedMTL, tj.AlignedMTLWeighting),
            "nash_mtl": (lambda: tj.NashMTL(n_tasks=_PEER_K[0]), None),
        }
    )
    return PEERS


_PEER_K = [3]  # Nash-MTL's TorchJD constructor needs K


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the full run (under 15 min on 2 cores, alone)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--width", type=float, default=0.125, help="MTAN channel multiplier")
    p.add_argument("--height", type=int, default=32, help="input height (multiple of 32)")
    p.add_argument("--image-width", type=int, default=64, help="input width (multiple of 32)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--classes", type=int, default=7, help="segmentation classes")
    p.add_argument("--rounds", type=int, default=9, help="most timed rounds (one step of every variant each)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=840.0,
        help="wall-clock budget: fewer rounds (at least 3) when the warm-up says they would not fit",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--methods", nargs="*", default=None, help=f"gradient methods (default: {DEFAULT_METHODS})")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--tasks", nargs="*", type=int, default=[3, 10], help="numbers of tasks K (>= 3)")
    p.add_argument("--paths", nargs="*", default=None, help="mtlkit grad paths (default: every one the config has)")
    p.add_argument("--no-torchjd", action="store_true", help="skip the TorchJD variants")
    p.add_argument("--no-nobn", action="store_true", help="skip the BatchNorm-free family")
    p.add_argument("--no-memory", action="store_true", help="skip the profiled memory step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help=f"about a minute: K = 3, 32x32, {QUICK_METHODS}, 2 rounds")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "weighting_step.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.image_width, args.rounds, args.warmup, args.tasks = 32, 2, 1, [3]
        args.methods = args.methods or QUICK_METHODS
    args.methods = args.methods or DEFAULT_METHODS
    if args.height % 32 or args.image_width % 32:
        p.error("--height and --image-width must be multiples of 32 (SegNet's five poolings)")
    if any(k < 3 for k in args.tasks):
        p.error("--tasks: K >= 3 (segmentation, depth, normals, then more depth heads)")
    return args


# ----------------------------------------------------------------------------- models and batches


def make_tasks(k: int, classes: int) -> list[Task]:
    """K = 3: segmentation, depth, normals; more: that and K - 3 more depth heads."""
    tasks = [segmentation_task(classes), depth_task(), normal_task()]
    return tasks + [depth_task(f"depth{i}") for i in range(k - 3)]


def make_batch(args: argparse.Namespace, tasks: list[Task], device: torch.device) -> dict[str, Tensor]:
    """A random batch whose every pixel is valid (so per-example losses average to the batch loss)."""
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


def without_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm2d replaced by GroupNorm(1, C) and ReLUs out of place (autogram's rules)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.GroupNorm(1, child.num_features))
        elif isinstance(child, nn.ReLU):
            setattr(model, name, nn.ReLU(inplace=False))
        else:
            without_batchnorm(child)
    return model


def shared_modules(model: nn.Module) -> list[nn.Module]:
    """The largest modules all of whose parameters are shared (what TorchJD's autogram Engine is given)."""
    shared = {id(p) for p in model.shared_parameters()}  # type: ignore[operator]
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        params = list(m.parameters())
        if params and all(id(p) in shared for p in params):
            out.append(m)
            return
        for child in m.children():
            visit(child)

    visit(model)
    return out


def task_losses(
    model: nn.Module, tasks: list[Task], preds: dict[str, Tensor], batch: dict[str, Tensor]
) -> list[Tensor]:
    return [t.loss(preds[t.name], batch[t.name]) for t in tasks]


def split_params(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(shared, task-specific) trainable parameters."""
    shared = [p for p in model.shared_parameters() if p.requires_grad]  # type: ignore[operator]
    ids = {id(p) for p in shared}
    return shared, [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


# ----------------------------------------------------------------------------- variants


@dataclass
class Variant:
    """One timed step: what it is, its step function, and what was measured."""

    family: str  # "mtan" | "mtan_nobn"
    mode: str  # "parameters" | "representation" | "-" (equal: loss-level, the same step in both)
    method: str
    impl: str  # "equal" | "k+1" | "mtlkit" | "torchjd"
    path: str  # mtlkit grad path, TorchJD variant, or "-"
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[dict[str, Tensor]], object] | None = None
    error: str | None = None
    times: list[float] = field(default_factory=list)
    first_grad: Tensor | None = None
    peak_bytes: int | None = None
    warm_s: float = 0.0  # the last warm-up step's time: what a round is estimated from

    @property
    def label(self) -> str:
        return f"{self.family}/{self.mode}/{self.method}/{self.impl}:{self.path}"


def _adam(model: nn.Module, method: nn.Module | None = None) -> torch.optim.Optimizer:
    params = list(model.parameters()) + ([p for p in method.parameters() if p.requires_grad] if method else [])
    return torch.optim.Adam(params, lr=1e-4)


def equal_step(
    model: nn.Module, tasks: list[Task], opt: torch.optim.Optimizer
) -> Callable[[dict[str, Tensor]], object]:
    def step(batch: dict[str, Tensor]) -> object:
        opt.zero_grad(set_to_none=True)
        torch.stack(task_losses(model, tasks, model(batch["image"]), batch)).sum().backward()
        opt.step()
        return None

    return step


def k_plus_1_step(
    model: nn.Module, tasks: list[Task], opt: torch.optim.Optimizer
) -> Callable[[dict[str, Tensor]], object]:
    """K backward passes of each loss to the shared parameters, then one of the sum (no aggregation)."""
    shared, _ = split_params(model)

    def step(batch: dict[str, Tensor]) -> object:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model, tasks, model(batch["image"]), batch)
        for loss in losses:
            torch.autograd.grad(loss, shared, retain_graph=True)
        torch.stack(losses).sum().backward()
        opt.step()
        return None

    return step


def torchjd_steps(
    model: nn.Module, tasks: list[Task], opt: torch.optim.Optimizer, method: str, mode: str, family: str
) -> dict[str, Callable[[dict[str, Tensor]], object] | str]:
    """TorchJD's ways to run ``method`` (variant name -> step, or the reason it cannot run)."""
    from torchjd import autojac
    from torchjd.aggregation import Sum

    make_agg, make_weighting = _peers()[method]
    shared, own = split_params(model)
    out: dict[str, Callable[[dict[str, Tensor]], object] | str] = {}
    core: Any = model

    if mode == "representation":
        if family != "mtan":
            return {}
        agg = make_agg()

        def jac_features(batch: dict[str, Tensor]) -> object:
            opt.zero_grad(set_to_none=True)
            cut = FeatureCut(core.encode(batch["image"]))
            losses = task_losses(model, tasks, core.decode(cut), batch)
            autojac.backward(losses, inputs=[*cut, *own])
            autojac.jac_to_grad(list(cut), agg)
            autojac.jac_to_grad(own, Sum())
            torch.autograd.backward(cut.sources, [c.grad for c in cut])
            opt.step()
            return None

        out["autojac.backward(features)+jac_to_grad"] = jac_features
        return out

    if family == "mtan":
        agg1, agg2 = make_agg(), make_agg()

        def mtl(batch: dict[str, Tensor]) -> object:
            opt.zero_grad(set_to_none=True)
            feats = core.encode(batch["image"])
            losses = task_losses(model, tasks, core.decode(feats), batch)
            # retain_graph: the features are computed from each other, so the shared graph is walked once per feature
            autojac.mtl_backward(losses, features=feats, shared_params=shared, retain_graph=True)
            autojac.jac_to_grad(shared, agg1)
            opt.step()
            return None

        def full(batch: dict[str, Tensor]) -> object:
            opt.zero_grad(set_to_none=True)
            losses = task_losses(model, tasks, model(batch["image"]), batch)
            autojac.backward(losses, inputs=[*shared, *own])
            autojac.jac_to_grad(shared, agg2)
            autojac.jac_to_grad(own, Sum())
            opt.step()
            return None

        out["mtl_backward+jac_to_grad"] = mtl
        out["autojac.backward+jac_to_grad"] = full
    if make_weighting is None:
        out["autogram"] = "TorchJD has no Gramian weighting for this method"
        return out
    from torchjd.autogram import Engine

    weighting = make_weighting()
    batched = family == "mtan_nobn"
    engine = Engine(*shared_modules(model), batch_dim=0 if batched else None)

    def gram(batch: dict[str, Tensor]) -> object:
        opt.zero_grad(set_to_none=True)
        preds = model(batch["image"])
        if batched:  # B x K per-example losses; their Gramian summed over example pairs / B^2
            b = batch["image"].shape[0]
            per = torch.stack(
                [
                    torch.stack([t.loss(preds[t.name][i : i + 1], batch[t.name][i : i + 1]) for t in tasks])
                    for i in range(b)
                ]
            )
            k = per.shape[1]
            g = engine.compute_gramian(per).reshape(b, k, b, k).sum(dim=(0, 2)) / b**2
            per.backward(weighting(g).expand(b, k) / b)
        else:
            losses = torch.stack(task_losses(model, tasks, preds, batch))
            losses.backward(weighting(engine.compute_gramian(losses)))
        opt.step()
        return None

    out[f"autogram(batch_dim={0 if batched else None})"] = gram
    return out


def build_variants(args: argparse.Namespace, k: int, device: torch.device) -> tuple[list[Variant], dict, dict]:
    """Every variant for K tasks, the batch, and D (shared size) per mode."""
    tasks = make_tasks(k, args.classes)
    names = [t.name for t in tasks]
    _PEER_K[0] = k
    torch.manual_seed(args.seed)
    base = build_model("mtan", tasks, width=args.width).to(device)
    batch = make_batch(args, tasks, device)
    dims = {
        "parameters": sum(p.numel() for p in base.shared_parameters()),
        "representation": sum(r.numel() for r in base.encode(batch["image"])),
    }
    families = {"mtan": base}
    if not args.no_nobn:
        families["mtan_nobn"] = without_batchnorm(copy.deepcopy(base))
    paths = args.paths if args.paths is not None else grad_paths()
    peers = {} if args.no_torchjd else _peers()
    out: list[Variant] = []
    for family, fbase in families.items():
        modes = [m for m in args.modes if family == "mtan" or m == "parameters"]
        if not modes:
            continue
        model = copy.deepcopy(fbase)
        opt = _adam(model)
        out.append(Variant(family, "-", "equal", "equal", "-", model, opt, equal_step(model, tasks, opt)))
        if "parameters" in modes:
            model = copy.deepcopy(fbase)
            opt = _adam(model)
            out.append(Variant(family, "parameters", "-", "k+1", "-", model, opt, k_plus_1_step(model, tasks, opt)))
        for mode in modes:
            for name in args.methods:
                for path in paths:
                    model = copy.deepcopy(fbase)
                    v = Variant(family, mode, name, "mtlkit", path, model, _adam(model))
                    try:
                        method = WEIGHTINGS.get(name)(names).to(device)
                        v.optimizer = _adam(model, method)
                        v.step = StepRunner(model, method, tasks, v.optimizer, mode, grad_path=path)
                    except (MtlkitError, ValueError, TypeError, NotImplementedError) as err:
                        v.error = str(err).splitlines()[0]
                    out.append(v)
                if name in peers:
                    probe = copy.deepcopy(fbase)  # only to list TorchJD's variants for this method and mode
                    for tj_name in torchjd_steps(probe, tasks, _adam(probe), name, mode, family):
                        m2 = copy.deepcopy(fbase)  # each variant on its own copy
                        o2 = _adam(m2)
                        s2 = torchjd_steps(m2, tasks, o2, name, mode, family)[tj_name]
                        v = Variant(family, mode, name, "torchjd", tj_name, m2, o2)
                        if isinstance(s2, str):
                            v.error = s2
                        else:
                            v.step = s2
                        out.append(v)
    return out, batch, dims


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _snapshot_first_grad(v: Variant) -> Callable[[], None]:
    """Record the shared parameters' .grad just before the optimizer's first step; returns the remover."""
    shared, _ = split_params(v.model)

    def hook(opt: torch.optim.Optimizer, *_: Any) -> None:
        if v.first_grad is None:
            v.first_grad = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double() for p in shared]
            ).cpu()

    handle = v.optimizer.register_step_pre_hook(hook)
    return handle.remove


def warm_up(variants: list[Variant], batch: dict[str, Tensor], warmup: int, seed: int, device: torch.device) -> None:
    """Each variant's first step (from the shared weights: its gradient is kept), then the rest."""
    for v in variants:
        if v.step is None:
            continue
        remove = _snapshot_first_grad(v)
        torch.manual_seed(seed)  # random methods (PCGrad) draw the same numbers in every variant
        try:
            for _ in range(max(warmup, 1)):
                start = time.perf_counter()
                v.step(batch)
                _sync(device)
                v.warm_s = time.perf_counter() - start
        except (MtlkitError, ValueError, RuntimeError, NotImplementedError, TypeError) as err:
            v.error, v.step = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}", None
        finally:
            remove()


def time_rounds(variants: list[Variant], batch: dict[str, Tensor], rounds: int, seed: int, device) -> None:
    """``rounds`` rounds, each one step of every runnable variant in a shuffled order."""
    order = [v for v in variants if v.step is not None]
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for v in order:
            _sync(device)
            start = time.perf_counter()
            v.step(batch)  # type: ignore[misc]
            _sync(device)
            v.times.append(time.perf_counter() - start)


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
    # "Total Allocated" is the profiler's running count: measure from its value before the step's first event
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in mem) - start)


def _rel(a: Tensor | None, b: Tensor | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def rows_for(variants: list[Variant], k: int, dims: dict[str, int]) -> list[dict]:
    """One row per variant: times, ratios (same round), memory, targets, gradient agreement."""
    rows = []
    by = {(v.family, v.mode, v.method, v.impl, v.path): v for v in variants}
    for v in variants:
        eq = by[(v.family, "-", "equal", "equal", "-")]
        k1 = by.get((v.family, "parameters", "-", "k+1", "-"))
        row: dict[str, Any] = {
            "tasks": k,
            "family": v.family,
            "mode": v.mode,
            "method": v.method,
            "impl": v.impl,
            "path": v.path,
            "supported": v.error is None and bool(v.times or v.peak_bytes is not None),
        }
        if v.error is not None:
            row["note"] = v.error
            rows.append(row)
            continue
        n = min(len(v.times), len(eq.times))
        if v.times:
            row["median_s"] = statistics.median(v.times)
            row["min_s"] = min(v.times)
            row["ratio"] = statistics.median(v.times[i] / eq.times[i] for i in range(n)) if n else None
            row["ratio_of_medians"] = row["median_s"] / statistics.median(eq.times)
            if v.mode == "parameters" and k1 is not None and k1.times:
                m = min(len(v.times), len(k1.times))
                row["ratio_k1"] = statistics.median(v.times[i] / k1.times[i] for i in range(m))
            row["times_s"] = v.times
        if v.peak_bytes is not None:
            row["peak_bytes"] = v.peak_bytes
            if eq.peak_bytes:
                row["memory_ratio"] = v.peak_bytes / eq.peak_bytes
            if v.mode in dims:
                row["kd_bytes"] = k * dims[v.mode] * 4
        ref = None
        if v.impl == "mtlkit" and v.path != "loop":
            ref = by.get((v.family, v.mode, v.method, "mtlkit", "loop"))
        elif v.impl == "torchjd" and v.path != "autojac.backward+jac_to_grad" and v.mode == "parameters":
            ref = by.get((v.family, v.mode, v.method, "torchjd", "autojac.backward+jac_to_grad"))
        if ref is not None:
            row["grad_reference"] = f"{ref.impl}:{ref.path}"
            row["grad_rel_diff"] = _rel(v.first_grad, ref.first_grad)
        rows.append(row)
    add_targets(rows)
    return rows


def add_targets(rows: list[dict]) -> None:
    """The issue's targets, per mtlkit row (``targets``: name -> met?, with the bound used)."""
    for r in rows:
        if r["impl"] != "mtlkit" or not r["supported"]:
            continue
        t: dict[str, Any] = {}
        if r.get("ratio") is not None:
            if r["mode"] == "representation":
                bound = 1.2 if r["tasks"] <= 3 else 1.5
                t[f"<={bound}x equal"] = r["ratio"] <= bound
            else:
                # TorchJD's variants that compute the method's update (not mtl_backward on chained features)
                peers = [
                    (x["ratio"], x["path"])
                    for x in rows
                    if x["impl"] == "torchjd"
                    and x.get("ratio") is not None
                    and (x.get("grad_rel_diff") is None or x["grad_rel_diff"] < EXACT)
                    and (x["family"], x["mode"], x["method"]) == (r["family"], r["mode"], r["method"])
                ]
                if peers:
                    r["torchjd_best_ratio"], r["torchjd_best"] = min(peers)
                    t["<=TorchJD"] = r["ratio"] <= r["torchjd_best_ratio"]
                if r.get("ratio_k1") is not None:
                    t["<=1.1x K+1"] = r["ratio_k1"] <= 1.1
        if r.get("peak_bytes") is not None and r.get("memory_ratio") is not None:
            eq_bytes = r["peak_bytes"] / r["memory_ratio"]
            if is_gramian_path(r["path"]):
                t["mem<=1.1 equal"] = r["peak_bytes"] <= 1.1 * eq_bytes
            elif "kd_bytes" in r:
                t["mem<=1.1(equal+KD)"] = r["peak_bytes"] <= 1.1 * (eq_bytes + r["kd_bytes"])
        r["targets"] = t


def choose_rounds(args: argparse.Namespace, round_s: float, spent_s: float, memory_s: float) -> int:
    """The rounds that fit the budget (``--rounds`` at most, 3 at least): one round costs ``round_s``."""
    memory_s = 0.0 if args.no_memory else memory_s
    fit = int((args.budget_s - spent_s - memory_s) / max(round_s, 1e-9))
    return max(3, min(args.rounds, fit)) if args.rounds >= 3 else args.rounds


def run(args: argparse.Namespace, device: torch.device, t0: float) -> tuple[list[dict], dict, int]:
    """Build and warm up every K's variants, time the rounds that fit the budget, measure memory."""
    built = {}
    for k in args.tasks:
        variants, batch, dims = build_variants(args, k, device)
        print(f"K = {k}: {sum(v.error is None for v in variants)} variants; warming up", flush=True)
        warm_up(variants, batch, args.warmup, args.seed, device)
        built[k] = (variants, batch, dims)
    round_s = sum(v.warm_s for vs, _, _ in built.values() for v in vs if v.step is not None)
    profiled = [v for vs, _, _ in built.values() for v in vs if v.step is not None and v.family == "mtan"]
    # a profiled step: about twice a plain one, plus about a second to export and read its trace (CPU)
    rounds = choose_rounds(args, round_s, time.perf_counter() - t0, sum(1.0 + 2 * v.warm_s for v in profiled))
    print(f"one round of every variant: about {round_s:.1f} s; timing {rounds} rounds", flush=True)
    rows, all_dims = [], {}
    for k, (variants, batch, dims) in built.items():
        for family in dict.fromkeys(v.family for v in variants):
            time_rounds([v for v in variants if v.family == family], batch, rounds, args.seed, device)
        if not args.no_memory:  # memory does not depend on load: the BatchNorm-free copy is not profiled
            for v in variants:
                if v.step is not None and v.family == "mtan":
                    v.peak_bytes = peak_bytes(lambda v=v, b=batch: v.step(b), device)  # type: ignore[misc]
        rows += rows_for(variants, k, dims)
        all_dims[k] = dims
    return rows, all_dims, rounds


def load() -> str:
    """``uptime``'s load averages (1, 5, 15 min)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> dict[str, str | None]:
    try:
        from importlib.metadata import version

        tj: str | None = version("torchjd")
    except Exception:
        tj = None
    return {"torch": torch.__version__, "torchjd": tj, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write the JSON and the Markdown table, print the table; returns the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    load_before = load()
    rows, dims, rounds = run(args, device, t0)
    result = {
        "benchmark": "weighting_step",
        "arch": "mtan",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rounds": rounds,
        "grad_paths": args.paths if args.paths is not None else grad_paths(),
        "memory": "peak bytes the torch allocator held during one step beyond its start, "
        + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else "from torch.profiler memory events (CPU)"),
        "ratio": "median over rounds of time / equal's time in the same round",
        "shared_dims": {str(k): v for k, v in dims.items()},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load(),
        "bench_seconds": time.perf_counter() - t0,
        "results": rows,
    }
    out = Path(args.out)
    atomic_write_json(out, result)
    table = format_markdown(result)
    atomic_write_text(out.with_suffix(".md"), table + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


# ----------------------------------------------------------------------------- Markdown


def _f(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def format_markdown(result: dict) -> str:
    """The table docs/benchmarks.md shows: one line per variant, grouped by K, family and mode."""
    s = result["settings"]
    lines = [
        f"MTAN width {s['width']}, {s['batch_size']}x3x{s['height']}x{s['image_width']}, "
        f"{result['threads']} thread(s), {result['device']}, torch {result['versions']['torch']}, "
        f"TorchJD {result['versions']['torchjd']}; {result['rounds']} interleaved rounds; load (1/5/15 min) "
        f"{result['load_before']} before, {result['load_after']} after; {result['bench_seconds']:.0f} s in all. "
        f"x equal: median over rounds of time / equal's time in the same round; x K+1: the same against "
        f"K + 1 backward passes through the shared part; memory: {result['memory']}; grad diff: relative "
        f"difference of the first step's shared gradient from the method's reference (mtlkit loop, TorchJD "
        f"autojac.backward); targets (mtlkit rows): <=1.2x / <=1.5x equal (representation, K = 3 / 10), "
        f"<=TorchJD (the best ratio of TorchJD's exact variants for the method), <=1.1x K+1, "
        f"mem<=1.1(equal+KD) (K x D paths), mem<=1.1 equal (Gramian paths).",
        "",
        "| K | model | mode | method | implementation | ms | x equal | x K+1 | peak MiB | x equal | grad diff "
        "| targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        impl = {"equal": "equal", "k+1": "K+1 backwards"}.get(r["impl"], f"{r['impl']} {r['path']}")
        head = f"| {r['tasks']} | {r['family']} | {r['mode']} | {r['method']} | {impl} |"
        if not r["supported"]:
            lines.append(f"{head} n/a: {r.get('note', '')[:120].replace('|', '/')} | | | | | | |")
            continue
        ms = _f(r.get("median_s") and r["median_s"] * 1e3, ".1f")
        mib = _f(r.get("peak_bytes") and r["peak_bytes"] / 2**20, ".1f")
        met = r.get("targets", {})
        targets = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in met.items())
        diff = _f(r.get("grad_rel_diff"), ".1e")
        lines.append(
            f"{head} {ms} | {_f(r.get('ratio'), '.2f')} | {_f(r.get('ratio_k1'), '.2f')} | {mib} | "
            f"{_f(r.get('memory_ratio'), '.2f')} | {diff} | {targets} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
