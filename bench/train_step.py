"""Benchmark: images/second of one full training step of every paper architecture, and of the data loader.

A step is what the trainer runs per batch: forward, the task losses, backward, optimizer step,
through the trainer's own :class:`~mtlkit.train.step.StepRunner` and optimizer builder
(:func:`~mtlkit.train.trainer.make_optimizer`), with equal weighting. Each architecture runs in
every setting that applies: eager float32, channels-last, bf16 autocast + channels-last (CUDA: the
trainer's defaults) and, with ``--compile``, torch.compile of the default setting. All cases are
built up front from the same seed; after a warm-up, rounds time one step of every case in a
shuffled order (load drift hits all alike) and the median per case gives images/s.

In the same run, on the same batch and initial weights, ``bench/reference_mtan.py`` (a plain
transcription of the MTAN paper with default Adam) is timed in the same settings, and the report
gives mtlkit's MTAN speed / the reference's speed (> 1: mtlkit is faster), against the float32
reference and against the reference in the same settings. The first step's losses of the two are
compared (they compute the same function), and so are compiled and eager steps (losses and
gradients) when ``--compile`` is given. FLOPs per image of a step (forward + backward, counted
with FlopCounterMode on the meta device) give the achieved throughput; ``--device cuda`` adds the
peak memory of each case. The data loader (the built-in scenes at the same size, through the
loader the trainer builds, 0 and 2 workers) is timed alone.

    python bench/train_step.py --quick                 # smoke run (about a minute on a CPU)
    python bench/train_step.py                         # CPU: width 0.25, 96x128; CUDA: paper size
    python bench/train_step.py --device cuda --compile --archs mtan
    python bench/train_step.py --device cuda --backbone resnet50_dilated --archs hps mtan

With ``--backbone`` the architectures are built on that backbone (no reference MTAN: it is a
SegNet), and the report adds each architecture's speed relative to ``hps`` on it.

Writes ``bench/results/train_step.json`` (atomically) and prints a table. Target (issue 7):
mtlkit's MTAN step at least 1.3x the reference's speed on the same input, in mtlkit's default
settings against the float32 reference (on CPU the defaults are float32 too).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mtlkit.config import config_from_dict
from mtlkit.io import atomic_write_json
from mtlkit.models import build_model
from mtlkit.models.params import PAPER_ARCHS
from mtlkit.registry import DATASETS, WEIGHTINGS
from mtlkit.tasks import Task, depth_task, normal_task, segmentation_task, stack_losses
from mtlkit.train import distributed as dist
from mtlkit.train.evaluate import move_batch
from mtlkit.train.speed import compile_unavailable, speed_settings
from mtlkit.train.step import StepRunner
from mtlkit.train.trainer import make_loader, make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_mtan import ReferenceMTAN, load_from_mtlkit, reference_step  # noqa: E402

LR = 1e-4  # the paper's Adam learning rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes default by device (see ``resolve``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--height", type=int, default=None, help="input height (default: 288 CUDA, 96 CPU)")
    p.add_argument("--width", type=int, default=None, help="input width (default: 384 CUDA, 128 CPU)")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--model-width", type=float, default=None, help="channel multiplier (default: 1.0 CUDA, 0.25 CPU)")
    p.add_argument("--classes", type=int, default=13, help="segmentation classes (NYUv2: 13)")
    p.add_argument("--steps", type=int, default=None, help="timed rounds (median per case; default: 8 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per case first (default: 1 CPU, 3 CUDA)")
    p.add_argument("--archs", nargs="*", default=list(PAPER_ARCHS), help="architectures (default: the paper's 7)")
    p.add_argument(
        "--backbone",
        default=None,
        help="build the architectures on this backbone (e.g. resnet50_dilated; default: their own)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile of the default setting (cold compile of SegNet on CPU: ~10 min per case)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the reference MTAN")
    p.add_argument("--no-loader", action="store_true", help="skip the data loader timing")
    p.add_argument("--loader-samples", type=int, default=None, help="scenes rendered for the loader (default: 64)")
    p.add_argument("--loader-epochs", type=int, default=5, help="timed passes over them (median)")
    p.add_argument("--data-root", default=None, help="scenes cache folder (default: mtlkit's cache)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 32x64 images, width 0.125, batch 2, 2 timed steps, 16 loader samples",
    )
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_step.json"))
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, torch.device]:
    """Fill the device-dependent defaults in place; returns the arguments and the device."""
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    cuda = device.type == "cuda"
    quick = args.quick
    defaults = {
        "height": 32 if quick else (288 if cuda else 96),
        "width": 64 if quick else (384 if cuda else 128),
        "model_width": 0.125 if quick else (1.0 if cuda else 0.25),
        "steps": 2 if quick else (20 if cuda else 8),
        "warmup": 1 if quick or not cuda else 3,
        "loader_samples": 16 if quick else 64,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if quick:
        args.batch = min(args.batch, 2)
        args.loader_epochs = min(args.loader_epochs, 2)
    if args.backbone not in (None, "segnet"):
        args.no_reference = True  # the reference MTAN is a SegNet
        if args.height % 8 or args.width % 8:
            raise SystemExit("--height and --width must be multiples of 8 (output stride 8)")
    elif args.height % 32 or args.width % 32:
        raise SystemExit("--height and --width must be multiples of 32 (five 2x2 poolings)")
    return args, device


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Variant:
    """One setting of the step: autocast dtype (None = float32), channels-last, torch.compile."""

    name: str
    autocast: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False


def variants(device: torch.device, with_compile: bool) -> tuple[list[Variant], str]:
    """The settings timed on ``device`` and the name of the one the trainer uses by default."""
    default = speed_settings(config_from_dict({}), device)
    out = [Variant("fp32"), Variant("channels_last", channels_last=True)]
    if device.type == "cuda" and default.autocast_dtype is not None:
        out.append(Variant("bf16+channels_last", default.autocast_dtype, default.channels_last))
    default_name = next(
        v.name for v in out if (v.autocast, v.channels_last) == (default.autocast_dtype, default.channels_last)
    )
    if with_compile:
        base = next(v for v in out if v.name == default_name)
        out.append(Variant(f"compile({base.name})", base.autocast, base.channels_last, compile=True))
    return out, default_name


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One timed thing: a step function and what the report says about it."""

    group: str  # "arch" or "reference"
    arch: str
    variant: Variant
    step: Callable[[], torch.Tensor]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    label: str = ""
    times: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    first_losses: torch.Tensor | None = None
    first_grads: torch.Tensor | None = None
    peak_mib: float | None = None

    @property
    def key(self) -> str:
        return f"{self.group}:{self.arch}:{self.variant.name}{':' + self.label if self.label else ''}"


def make_tasks(classes: int) -> list[Task]:
    return [segmentation_task(classes), depth_task(), normal_task()]


def make_batch(args: argparse.Namespace, tasks: list[Task]) -> dict[str, torch.Tensor]:
    """A random but valid batch (on the CPU) for segmentation / depth / normal."""
    gen = torch.Generator().manual_seed(args.seed)
    b, h, w = args.batch, args.height, args.width
    return {
        "image": torch.rand(b, 3, h, w, generator=gen),
        tasks[0].name: torch.randint(0, args.classes, (b, h, w), generator=gen),
        tasks[1].name: torch.rand(b, 1, h, w, generator=gen) + 0.1,
        tasks[2].name: F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1),
    }


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def mtlkit_case(
    arch: str, v: Variant, tasks: list[Task], args, device, batch, *, fused: bool = True, label: str = ""
) -> Case:
    """The trainer's step for ``arch`` in setting ``v`` (its optimizer builder, unless ``fused=False``)."""
    cfg = config_from_dict({"optim": {"name": "adam", "lr": LR}})
    torch.manual_seed(args.seed)
    model = build_model(arch, tasks, args.model_width, backbone=args.backbone).to(device)
    weighting = WEIGHTINGS.get("equal")([t.name for t in tasks]).to(device)
    opt = make_optimizer(cfg, model, weighting) if fused else torch.optim.Adam(model.parameters(), lr=LR)
    if v.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if v.compile else model
    runner = StepRunner(net, weighting, tasks, opt, "parameters", None, v.autocast)
    b = move_batch(batch, device, v.channels_last)
    return Case("arch", arch, v, lambda: runner(b), model, opt, label)


def reference_case(v: Variant, tasks: list[Task], args, device, batch) -> Case:
    """The plain reference MTAN, started from the same weights as mtlkit's MTAN, default Adam."""
    torch.manual_seed(args.seed)
    source = build_model("mtan", tasks, args.model_width)
    ref = load_from_mtlkit(ReferenceMTAN({t.name: t.channels for t in tasks}, args.model_width), source).to(device)
    opt = torch.optim.Adam(ref.parameters(), lr=LR)
    if v.channels_last:
        ref = ref.to(memory_format=torch.channels_last)
    net = torch.compile(ref) if v.compile else ref
    b = move_batch(batch, device, v.channels_last)
    kinds = {t.name: t.kind for t in tasks}

    def step() -> torch.Tensor:
        return reference_step(net, opt, b, kinds, autocast_dtype=v.autocast)

    return Case("reference", "mtan", v, step, ref, opt)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None]).cpu()


def _state_bytes(case: Case) -> int:
    """Parameters, buffers and optimizer state of a case (what stays allocated between steps)."""
    n = sum(t.numel() * t.element_size() for t in [*case.model.parameters(), *case.model.buffers()])
    for state in case.optimizer.state.values():
        n += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.device.type == "cuda")
    return n


def warm_up(cases: list[Case], warmup: int, device: torch.device) -> None:
    """First call of every case (compiles; losses and gradients kept for the checks), then the rest."""
    compiled = {c.arch for c in cases if c.variant.compile}
    for case in cases:
        _sync(device)
        start = time.perf_counter()
        case.first_losses = case.step().float().cpu()
        _sync(device)
        case.first_call_s = time.perf_counter() - start
        if case.group == "arch" and case.arch in compiled:
            case.first_grads = _flat_grads(case.model)
    for case in cases:
        for i in range(max(warmup - 1, 0) + (1 if device.type == "cuda" else 0)):
            if device.type == "cuda" and i == 0:  # one step measured alone: its peak memory
                _sync(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                case.step()
                _sync(device)
                transient = torch.cuda.max_memory_allocated(device) - base
                case.peak_mib = (transient + _state_bytes(case)) / 2**20
            else:
                case.step()


def time_cases(cases: list[Case], rounds: int, device: torch.device, seed: int) -> None:
    """``rounds`` rounds, each one step of every case in a shuffled order.

    The cases compared with each other (mtlkit's MTAN and the reference) run back to back in every
    round, in a shuffled order too, so that their per-round ratios see the same machine load.
    """
    blocks: dict[str, list[Case]] = {}
    for case in cases:
        blocks.setdefault("mtan-vs-reference" if case.arch == "mtan" else case.key, []).append(case)
    order = list(blocks.values())
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for block in order:
            rng.shuffle(block)
            for case in block:
                _sync(device)
                start = time.perf_counter()
                case.step()
                _sync(device)
                case.times.append(time.perf_counter() - start)


# ----------------------------------------------------------------------------- FLOPs


def step_flops(build: Callable[[], torch.nn.Module], tasks: list[Task], h: int, w: int) -> int:
    """FLOPs per image of forward + backward (the losses' sum), counted on the meta device."""
    with torch.device("meta"):
        model = build()
        # two images: training-mode BatchNorm after a global pooling (DeepLabV3's ASPP) needs more than one
        batch = {
            "image": torch.rand(2, 3, h, w),
            tasks[0].name: torch.randint(0, tasks[0].channels, (2, h, w)),
            tasks[1].name: torch.rand(2, 1, h, w),
            tasks[2].name: torch.rand(2, 3, h, w),
        }
    counter = FlopCounterMode(display=False)
    with counter:
        stack_losses(tasks, model(batch["image"]), batch).sum().backward()
    return int(counter.get_total_flops()) // 2


# ----------------------------------------------------------------------------- data loader


def time_loader(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Images/s of the scenes dataset alone and through the trainer's loader (0 and 2 workers)."""
    data = {
        "name": "scenes",
        "num_classes": args.classes,
        "height": args.height,
        "width": args.width,
        "n_train": args.loader_samples,
        "n_val": 1,
        "options": {"progress": False},
    }
    if args.data_root:
        data["root"] = args.data_root
    rows = []
    for workers in (None, 0, 2):
        cfg = config_from_dict(
            {"dataset": data, "seed": args.seed, "train": {"batch_size": args.batch, "num_workers": workers or 0}}
        )
        builder = DATASETS.get("scenes")(cfg.dataset)
        start = time.perf_counter()
        ds = builder.dataset("train", train=True)
        prepare_s = time.perf_counter() - start
        if workers is None:

            def one_pass(ds=ds) -> int:
                for i in range(len(ds)):
                    ds[i]
                return len(ds)

            name = "dataset[i] (no loader)"
        else:
            loader = make_loader(builder, ds, cfg, train=True)

            def one_pass(loader=loader) -> int:
                return sum(len(b["image"]) for b in loader)

            name = f"make_loader, {workers} workers"
        start = time.perf_counter()
        one_pass()  # warm-up: starts persistent workers, reads the files once
        first_s = time.perf_counter() - start
        times, n = [], 0
        for epoch in range(args.loader_epochs):
            if workers is not None:
                dist.set_epoch(loader, epoch + 1)
            start = time.perf_counter()
            n = one_pass()
            times.append(time.perf_counter() - start)
        med = statistics.median(times)
        rows.append(
            {
                "loader": name,
                "workers": workers,
                "samples": n,
                "median_s": med,
                "images_per_s": n / med,
                "first_pass_s": first_s,
                "prepare_s": prepare_s,
                "times_s": times,
                "pin_memory": device.type == "cuda" and workers is not None,
                "augment": cfg.dataset.augment,
            }
        )
        if workers:
            del loader  # stops the persistent workers
    return rows


# ----------------------------------------------------------------------------- report


def _row(case: Case, batch: int, flops: int | None, default_name: str) -> dict:
    med, best = statistics.median(case.times), min(case.times)
    return {
        "group": case.group,
        "arch": case.arch,
        "variant": case.variant.name,
        "default": case.variant.name == default_name and case.group == "arch" and not case.label,
        "label": case.label or None,
        "median_s": med,
        "min_s": best,
        "images_per_s": batch / med,
        "images_per_s_best": batch / best,
        "gflop_per_image": flops / 1e9 if flops else None,
        "achieved_gflop_s": flops * batch / med / 1e9 if flops else None,
        "peak_mib": case.peak_mib,
        "first_call_s": case.first_call_s,
        "times_s": case.times,
    }


def _paired(slow: Case, fast: Case) -> float:
    """Median over rounds of time(slow) / time(fast): both ran back to back in every round."""
    return statistics.median(a / b for a, b in zip(slow.times, fast.times))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _cases(args, tasks, vs: list, default_name: str, device, batch) -> list[Case]:
    """Every architecture under every setting, then (unless --no-reference) plain Adam and the reference."""
    cases: list[Case] = []
    for arch in args.archs:
        for v in vs:
            cases.append(mtlkit_case(arch, v, tasks, args, device, batch))
    if not args.no_reference:
        default_v = next(v for v in vs if v.name == default_name)
        cases.append(mtlkit_case("mtan", default_v, tasks, args, device, batch, fused=False, label="default Adam"))
        for v in vs:
            cases.append(reference_case(v, tasks, args, device, batch))
    return cases


def _flops(args, tasks) -> dict:
    """FLOPs of one step of each architecture (and of the reference network)."""
    flops = {}
    for arch in args.archs:
        flops[arch] = step_flops(
            lambda arch=arch: build_model(arch, tasks, args.model_width, backbone=args.backbone),
            tasks,
            args.height,
            args.width,
        )
    if not args.no_reference:
        channels = {t.name: t.channels for t in tasks}
        flops["reference"] = step_flops(
            lambda: ReferenceMTAN(channels, args.model_width), tasks, args.height, args.width
        )
    return flops


def _reference_comparison(args, vs: list, by_key: dict, default_name: str, flops: dict) -> dict:
    """mtlkit's MTAN step against the reference's, per setting and for the default one ({} without both)."""
    if args.no_reference or "mtan" not in args.archs:
        return {}
    ref_fp32_case, ref_fp32 = by_key["reference:mtan:fp32"]
    mt_default_case, mt_default = by_key[f"arch:mtan:{default_name}"]
    entries = []
    for v in vs:
        mc, mr = by_key[f"arch:mtan:{v.name}"]
        rc, rr = by_key[f"reference:mtan:{v.name}"]
        entries.append(
            {
                "variant": v.name,
                "mtlkit_images_per_s": mr["images_per_s"],
                "reference_images_per_s": rr["images_per_s"],
                "ratio_same_settings": mr["images_per_s"] / rr["images_per_s"],
                "ratio_same_settings_paired": _paired(rc, mc),
                "ratio_vs_reference_fp32": mr["images_per_s"] / ref_fp32["images_per_s"],
                "ratio_vs_reference_fp32_paired": _paired(ref_fp32_case, mc),
                "ratio_same_settings_best": mr["images_per_s_best"] / rr["images_per_s_best"],
                "first_step_loss_rel_diff": _rel(mc.first_losses, rc.first_losses),
            }
        )
    plain_adam_case, plain_adam = by_key[f"arch:mtan:{default_name}:default Adam"]
    return {
        "definition": "images/s of mtlkit's MTAN step / images/s of the reference's step (> 1: mtlkit faster)",
        "target": 1.3,
        "default_settings": default_name,
        "ratio_default_vs_reference_fp32": mt_default["images_per_s"] / ref_fp32["images_per_s"],
        "ratio_default_vs_reference_fp32_paired": _paired(ref_fp32_case, mt_default_case),
        "ratio_default_vs_reference_fp32_best": mt_default["images_per_s_best"] / ref_fp32["images_per_s_best"],
        "ratio_default_vs_reference_same_settings": mt_default["images_per_s"]
        / by_key[f"reference:mtan:{default_name}"][1]["images_per_s"],
        "fused_adam_gain": mt_default["images_per_s"] / plain_adam["images_per_s"],
        "fused_adam_gain_paired": _paired(plain_adam_case, mt_default_case),
        "flops_equal": flops.get("mtan") == flops.get("reference"),
        "by_setting": entries,
    }


def _compile_checks(cases: list[Case], by_key: dict) -> list[dict]:
    """Compiled vs eager (same model, weights and batch): the first step's losses and gradients."""
    checks = []
    for c in cases:
        if c.variant.compile and c.group == "arch":
            base_name = c.variant.name[len("compile(") : -1]
            eager = by_key.get(f"arch:{c.arch}:{base_name}")
            if eager and eager[0].first_grads is not None and c.first_grads is not None:
                e = eager[0]
                checks.append(
                    {
                        "arch": c.arch,
                        "variant": c.variant.name,
                        "compile_s": c.first_call_s,
                        "loss_rel_diff": _rel(c.first_losses, e.first_losses),
                        "grad_rel_diff": _rel(c.first_grads, e.first_grads),
                    }
                )
    return checks


def _ratio_to_hps(args, by_key: dict, default_name: str) -> dict:
    """Each architecture against hard parameter sharing on the same backbone, default setting ({} without hps)."""
    ratios = {}
    if "hps" in args.archs:
        hps_case, hps_row = by_key[f"arch:hps:{default_name}"]
        for arch in args.archs:
            case, row = by_key[f"arch:{arch}:{default_name}"]
            ratios[arch] = {
                "images_per_s_ratio": row["images_per_s"] / hps_row["images_per_s"],
                "images_per_s_ratio_paired": _paired(hps_case, case),  # per-round time(hps)/time(arch)
                "peak_mib_ratio": row["peak_mib"] / hps_row["peak_mib"] if row["peak_mib"] else None,
            }
    return ratios


def _setup(argv: list[str] | None):
    """Arguments, device (threads set, --compile checked), tasks, the batch and the settings to time."""
    args, device = resolve(parse_args(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        reason = compile_unavailable(device)
        if reason:
            raise SystemExit(f"--compile: {reason}")
    tasks = make_tasks(args.classes)
    batch = make_batch(args, tasks)
    vs, default_name = variants(device, args.compile)
    print(
        f"device {device}, {args.height}x{args.width}, batch {args.batch}, model width {args.model_width}, "
        f"threads {torch.get_num_threads()}, settings {', '.join(v.name for v in vs)} (default: {default_name})",
        flush=True,
    )
    return args, device, tasks, batch, vs, default_name


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write the JSON file, print the table; returns the results."""
    args, device, tasks, batch, vs, default_name = _setup(argv)
    cases = _cases(args, tasks, vs, default_name, device, batch)
    flops = _flops(args, tasks)

    t0 = time.perf_counter()
    warm_up(cases, args.warmup, device)
    time_cases(cases, args.steps, device, args.seed)
    bench_s = time.perf_counter() - t0

    rows = [
        _row(c, args.batch, flops.get("reference" if c.group == "reference" else c.arch), default_name) for c in cases
    ]
    by_key = {c.key: (c, r) for c, r in zip(cases, rows)}
    comparison = _reference_comparison(args, vs, by_key, default_name, flops)
    compile_checks = _compile_checks(cases, by_key)
    loader_rows = [] if args.no_loader else time_loader(args, device)
    ratio_to_hps = _ratio_to_hps(args, by_key, default_name)

    result = {
        "benchmark": "train_step",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "tasks": [t.name for t in tasks],
        "weighting": "equal",
        "optimizer": "trainer's make_optimizer (Adam, lr 1e-4; fused where available); reference: default Adam",
        "default_settings": default_name,
        "bench_seconds": bench_s,
        "results": rows,
        "reference": comparison,
        "ratio_to_hps": ratio_to_hps,
        "compile_checks": compile_checks,
        "loader": loader_rows,
    }
    atomic_write_json(args.json, result)
    print(format_report(result))
    print(f"wrote {args.json}")
    return result


def format_report(result: dict) -> str:
    """Fixed-width tables: the steps, the reference comparison, compile checks, the loader."""
    cuda = result["device"].startswith("cuda")
    head = (
        f"{'arch':<13} {'setting':<26} {'ms/step':>9} {'img/s':>8} {'(best)':>8} {'GFLOP/img':>10} "
        f"{'GFLOP/s':>9}" + (f" {'peak MiB':>9}" if cuda else "")
    )
    lines = [head, "-" * len(head)]
    for r in result["results"]:
        arch = r["arch"] if r["group"] == "arch" else "reference"
        setting = r["variant"] + (" *" if r["default"] else "") + (f" [{r['label']}]" if r["label"] else "")
        gf = f"{r['gflop_per_image']:>10.2f}" if r["gflop_per_image"] else f"{'':>10}"
        ach = f"{r['achieved_gflop_s']:>9.1f}" if r["achieved_gflop_s"] else f"{'':>9}"
        mem = (f" {r['peak_mib']:>9.0f}" if r["peak_mib"] is not None else f" {'':>9}") if cuda else ""
        lines.append(
            f"{arch:<13} {setting:<26} {r['median_s'] * 1e3:>9.1f} {r['images_per_s']:>8.2f} "
            f"{r['images_per_s_best']:>8.2f} {gf} {ach}{mem}"
        )
    lines.append(
        "* = the trainer's default setting on this device; img/s from the median step, (best) from the fastest"
    )
    ref = result["reference"]
    if ref:
        lines += [
            "",
            "MTAN: mtlkit / reference (images/s ratio, > 1 = mtlkit faster; paired = median of "
            "per-round ratios, both run back to back)",
            f"{'setting':<26} {'mtlkit img/s':>13} {'ref img/s':>10} {'same settings':>14} {'(paired)':>9} "
            f"{'vs ref fp32':>12} {'(paired)':>9} {'1st-step loss diff':>19}",
        ]
        for e in ref["by_setting"]:
            lines.append(
                f"{e['variant']:<26} {e['mtlkit_images_per_s']:>13.2f} {e['reference_images_per_s']:>10.2f} "
                f"{e['ratio_same_settings']:>14.3f} {e['ratio_same_settings_paired']:>9.3f} "
                f"{e['ratio_vs_reference_fp32']:>12.3f} {e['ratio_vs_reference_fp32_paired']:>9.3f} "
                f"{e['first_step_loss_rel_diff']:>19.1e}"
            )
        r = ref
        lines.append(
            f"mtlkit default settings ({r['default_settings']}) vs reference fp32: "
            f"{r['ratio_default_vs_reference_fp32']:.3f}x (paired "
            f"{r['ratio_default_vs_reference_fp32_paired']:.3f}x, best steps "
            f"{r['ratio_default_vs_reference_fp32_best']:.3f}x; target {r['target']}x); "
            f"vs reference in the same settings: {r['ratio_default_vs_reference_same_settings']:.3f}x"
        )
        lines.append(
            f"fused Adam (trainer) vs default Adam, same model and settings: {r['fused_adam_gain']:.3f}x "
            f"(paired {r['fused_adam_gain_paired']:.3f}x); same FLOPs as the reference: {r['flops_equal']}"
        )
    if result.get("ratio_to_hps"):
        lines += [
            "",
            f"relative to hps ({result['settings'].get('backbone') or 'own backbone'}, default setting): "
            "images/s ratio (paired), peak memory ratio",
        ]
        for arch, r in result["ratio_to_hps"].items():
            mem = f"{r['peak_mib_ratio']:.2f}" if r["peak_mib_ratio"] else "-"
            ratio, paired = r["images_per_s_ratio"], r["images_per_s_ratio_paired"]
            lines.append(f"  {arch:<13} {ratio:.3f} ({paired:.3f})  memory {mem}")
    if result["compile_checks"]:
        lines += ["", "torch.compile vs eager, first step from the same weights and batch:"]
        for c in result["compile_checks"]:
            lines.append(
                f"  {c['arch']:<13} compile {c['compile_s']:.0f} s, loss rel diff {c['loss_rel_diff']:.1e}, "
                f"gradient rel diff {c['grad_rel_diff']:.1e}"
            )
    if result["loader"]:
        lines += ["", f"{'data (scenes, same size)':<28} {'img/s':>9} {'first pass s':>13}"]
        for r in result["loader"]:
            lines.append(f"{r['loader']:<28} {r['images_per_s']:>9.1f} {r['first_pass_s']:>13.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
