"""The GPU benchmark: what a lent H100/H200 measures in one run (under 8 minutes), as one JSON and one table.

Three parts, each on random but valid NYUv2-shaped batches (13 classes, depth, normals), every case
built from the same seed; after a warm-up, rounds time one step of every case of a part in a shuffled
order (``bench/train_step.py``'s machinery), and peak memory is ``torch.cuda.max_memory_allocated``
over one step (plus parameters, buffers and optimizer state):

1. ``mtan_step``: the official-style float32 MTAN step (``bench/reference_mtan.py``, default Adam)
   against mtlkit's MTAN (the trainer's step and optimizer) in float32, bf16 autocast +
   channels-last, and that under ``torch.compile``, at 288x384, batch 2 and 8 (SegNet, width 1).
2. ``weighting``: gradient methods against ``equal`` at K = 3 (``bench/weighting_step.py``'s
   variants: every ``weighting.grad_path``, both modes, TorchJD where installed), 288x384 batch 2.
3. ``throughput``: ResNet-50 (dilated) HPS and MTAN, images/s and peak memory at 288x384 batch 8,
   float32 and bf16 + channels-last.

``--device cpu --tiny`` is the CI dry run: every code path at toy sizes in seconds (32x32 images,
width 1/16, torch.compile with the ``eager`` backend so no compiler runs). See docs/benchmarks.md
for running it on a lent machine (``bench/gpu.sh``).

    bench/gpu.sh --out /path/gpu.json                   # on the GPU machine
    bench/gpu.sh --device cpu --tiny --out /tmp/g.json  # the dry run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step as ts  # noqa: E402
import weighting_step as ws  # noqa: E402
from mtlkit.config import config_from_dict  # noqa: E402
from mtlkit.io import atomic_write_json, atomic_write_text  # noqa: E402
from mtlkit.models import build_model  # noqa: E402
from mtlkit.registry import WEIGHTINGS  # noqa: E402
from mtlkit.train.evaluate import move_batch  # noqa: E402
from mtlkit.train.step import StepRunner  # noqa: E402
from mtlkit.train.trainer import make_optimizer  # noqa: E402

PARTS = ("mtan_step", "weighting", "throughput")
GPU_METHODS = ["upgrad", "mgda", "pcgrad", "cagrad"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (the CPU dry run): every code path in seconds")
    p.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per part (default: 15; tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default: 3; tiny: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"), help="JSON (and .md beside)")
    args = p.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.tiny else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    size = dict(height=32, width=32, model_width=1 / 16) if args.tiny else dict(height=288, width=384, model_width=1.0)
    for key, value in size.items():
        setattr(args, key, value)
    args.classes = 13
    return args


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _case(
    arch: str, v: ts.Variant, tasks, args: argparse.Namespace, device, batch, *, backbone: str | None, backend: str
) -> ts.Case:
    """The trainer's step (its optimizer, its StepRunner) for ``arch`` in setting ``v``."""
    cfg = config_from_dict({"optim": {"name": "adam", "lr": ts.LR}})
    torch.manual_seed(args.seed)
    model = build_model(arch, tasks, args.model_width, backbone=backbone).to(device)
    weighting = WEIGHTINGS.get("equal")([t.name for t in tasks]).to(device)
    opt = make_optimizer(cfg, model, weighting)
    if v.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, backend=backend) if v.compile else model
    runner = StepRunner(net, weighting, tasks, opt, "parameters", None, v.autocast)
    b = move_batch(batch, device, v.channels_last)
    return ts.Case("arch", arch, v, lambda: runner(b), model, opt)


def _timed(cases: list[ts.Case], args: argparse.Namespace, device: torch.device, batch_size: int) -> list[dict]:
    """Warm up and time ``cases`` (interleaved rounds); one row each."""
    ts.warm_up(cases, args.warmup, device)
    ts.time_cases(cases, args.rounds, device, args.seed)
    out = []
    for c in cases:
        med = statistics.median(c.times)
        out.append(
            {
                "case": "reference" if c.group == "reference" else c.arch,
                "setting": c.variant.name,
                "batch": batch_size,
                "median_s": med,
                "images_per_s": batch_size / med,
                "peak_mib": c.peak_mib,
                "first_call_s": c.first_call_s,
                "times_s": c.times,
            }
        )
    return out


def mtan_step(args: argparse.Namespace, device: torch.device, backend: str) -> list[dict]:
    """Reference fp32 vs mtlkit fp32, bf16 + channels-last, + compile; batch 2 and 8."""
    settings = [
        ts.Variant("fp32"),
        ts.Variant("bf16+channels_last", torch.bfloat16, True),
        ts.Variant("compile(bf16+channels_last)", torch.bfloat16, True, compile=True),
    ]
    rows = []
    for b in (2, 8):
        a = argparse.Namespace(**{**vars(args), "batch": b, "backbone": None})
        tasks = ts.make_tasks(args.classes)
        batch = ts.make_batch(a, tasks)
        cases = [ts.reference_case(settings[0], tasks, a, device, batch)]
        cases += [_case("mtan", v, tasks, a, device, batch, backbone=None, backend=backend) for v in settings]
        rows += _timed(cases, a, device, b)
        ref = next(r for r in rows if r["case"] == "reference" and r["batch"] == b)
        for r in rows:
            if r["batch"] == b:
                r["speedup_vs_reference_fp32"] = r["images_per_s"] / ref["images_per_s"]
    return rows


def throughput(args: argparse.Namespace, device: torch.device, backend: str) -> list[dict]:
    """ResNet-50 HPS and MTAN at batch 8: images/s and peak memory, fp32 and bf16 + channels-last."""
    settings = [ts.Variant("fp32"), ts.Variant("bf16+channels_last", torch.bfloat16, True)]
    a = argparse.Namespace(**{**vars(args), "batch": 8})
    tasks = ts.make_tasks(args.classes)
    batch = ts.make_batch(a, tasks)
    cases = [
        _case(arch, v, tasks, a, device, batch, backbone="resnet50_dilated", backend=backend)
        for arch in ("hps", "mtan")
        for v in settings
    ]
    rows = _timed(cases, a, device, 8)
    for r in rows:
        r["case"] = f"{r['case']} (resnet50_dilated)"
    return rows


def weighting(args: argparse.Namespace, device: torch.device) -> dict:
    """Gradient methods vs equal at K = 3 (weighting_step's variants at this part's size)."""
    argv = [
        "--tasks",
        "3",
        "--width",
        str(args.model_width),
        "--height",
        str(args.height),
        "--image-width",
        str(args.width),
        "--batch-size",
        "2",
        "--classes",
        str(args.classes),
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
        "--device",
        str(device),
        "--threads",
        "1" if device.type == "cpu" else "0",
        "--no-nobn",
        "--budget-s",
        "240",
        "--methods",
        *(GPU_METHODS[:1] if args.tiny else GPU_METHODS),
        *(["--no-memory"] if device.type == "cpu" else []),  # CUDA's allocator counts; the CPU profiler is slow
    ]
    wargs = ws.parse_args(argv)
    rows, dims, rounds = ws.run(wargs, device, time.perf_counter())
    return {"rows": rows, "shared_dims": dims, "rounds": rounds, "grad_paths": ws.grad_paths()}


def format_markdown(result: dict) -> str:
    info = result["info"]
    lines = [
        f"{info.get('device_name', info['device'])}, torch {info['torch']}, CUDA {info.get('cuda')}; "
        f"{result['settings']['height']}x{result['settings']['width']}, "
        f"model width {result['settings']['model_width']}; "
        f"{result['settings']['rounds']} rounds; {result['seconds']:.0f} s in all"
        + (" (tiny dry run: not a measurement)" if result["settings"]["tiny"] else ""),
    ]
    if result.get("mtan_step"):
        lines += [
            "",
            "| MTAN step | setting | batch | ms | images/s | x reference fp32 | peak MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["mtan_step"]:
            mib = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(
                f"| {r['case']} | {r['setting']} | {r['batch']} | {r['median_s'] * 1e3:.1f} | "
                f"{r['images_per_s']:.1f} | {r['speedup_vs_reference_fp32']:.2f} | {mib} |"
            )
    if result.get("throughput"):
        lines += ["", "| model | setting | batch | images/s | peak MiB |", "|---|---|---|---|---|"]
        for r in result["throughput"]:
            mib = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| {r['case']} | {r['setting']} | {r['batch']} | {r['images_per_s']:.1f} | {mib} |")
    if result.get("weighting"):
        w = result["weighting"]
        fake = {
            "settings": {**result["settings"], "width": result["settings"]["model_width"], "batch_size": 2},
            "threads": info["threads"],
            "device": info["device"],
            "versions": {"torch": info["torch"], "torchjd": ws.versions()["torchjd"]},
            "rounds": w["rounds"],
            "load_before": "-",
            "load_after": "-",
            "bench_seconds": w.get("seconds", 0.0),
            "memory": "torch.cuda.max_memory_allocated" if info["device"].startswith("cuda") else "torch.profiler",
            "results": w["rows"],
        }
        fake["settings"]["image_width"] = result["settings"]["width"]
        fake["settings"]["height"] = result["settings"]["height"]
        lines += ["", "Gradient methods vs equal, K = 3:", "", ws.format_markdown(fake)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (the dry run is --device cpu --tiny)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:  # the dry run: one thread (a spinning second thread on a loaded machine costs seconds per step)
        torch.set_num_threads(1)
    backend = "eager" if device.type == "cpu" else "inductor"
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "compile_backend": backend,
        "info": device_info(device),
    }
    for part in args.parts:
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        if part == "mtan_step":
            result[part] = mtan_step(args, device, backend)
        elif part == "throughput":
            result[part] = throughput(args, device, backend)
        else:
            result[part] = weighting(args, device)
            result[part]["seconds"] = time.perf_counter() - start
        result.setdefault("part_seconds", {})[part] = time.perf_counter() - start
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write_json(out, result)
    table = format_markdown(result)
    atomic_write_text(out.with_suffix(".md"), table + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
