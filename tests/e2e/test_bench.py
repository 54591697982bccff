"""The benchmarks stay runnable: CI runs the GPU script's dry run, and the weighting benchmark covers
every gradient path the config accepts (read from its annotation, so a new path needs no bench edit).

The benchmarks themselves are not run here (their targets are benchmark figures, never timed tests):
``.ci/run`` runs ``bench/gpu.sh --device cpu --tiny`` as its own step; ``bench/weighting_step.py --quick``
is the weighting benchmark's smoke run (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path

import pytest

from mtlkit.config import WeightingConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import weighting_step as ws  # noqa: E402


def test_ci_runs_the_gpu_dry_run_as_a_timed_step() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    run = [line for line in lines if line.startswith("PYTHON=") and "bench/gpu.sh" in line]
    assert len(run) == 1 and "--device cpu" in run[0] and "--tiny" in run[0], run
    assert any(line.startswith('echo "== gpu.sh dry run:') for line in lines)
    assert (ROOT / "bench" / "gpu.sh").stat().st_mode & 0o111, "bench/gpu.sh must be executable"
    # the wheels it installs from on a GPU machine list what the dry run imports besides torch
    reqs = (ROOT / "bench" / "gpu_requirements.txt").read_text()
    for name in ("pydantic", "pyyaml", "tqdm", "scipy"):
        assert re.search(rf"^{name}\b", reqs, re.M), name


def test_every_grad_path_of_the_config_is_benchmarked() -> None:
    paths = list(typing.get_args(WeightingConfig.model_fields["grad_path"].annotation))
    assert ws.grad_paths() == paths and paths
    args = ws.parse_args(["--tasks", "3", "--methods", "upgrad", "--no-torchjd", "--no-nobn", "--width", "0.0625"])
    variants, _, dims = ws.build_variants(args, 3, ws.torch.device("cpu"))
    for mode in ws.MODES:
        got = [v.path for v in variants if v.impl == "mtlkit" and v.mode == mode]
        assert got == paths, (mode, got)
    assert {v.impl for v in variants} == {"equal", "k+1", "mtlkit"}
    assert dims["parameters"] > 0 and dims["representation"] > 0


def _row(impl: str, path: str, mode: str, times: list[float], peak: int, **extra) -> dict:
    return {
        "tasks": 3,
        "family": "mtan",
        "mode": mode,
        "method": "upgrad" if impl != "equal" else "equal",
        "impl": impl,
        "path": path,
        "supported": True,
        "median_s": sorted(times)[1],
        "times_s": times,
        "peak_bytes": peak,
        **extra,
    }


def test_targets_follow_the_issue() -> None:
    """Representation: <= 1.2x equal at K = 3; parameters: <= TorchJD's exact variants, <= 1.1x K+1; memory."""
    kd = 3 * 100 * 4
    rows = [
        {
            **_row("mtlkit", "loop", "representation", [1, 1, 1], 1000),
            "ratio": 1.19,
            "memory_ratio": 1.0,
            "kd_bytes": kd,
        },
        {
            **_row("mtlkit", "gramian", "parameters", [1, 1, 1], 1000),
            "ratio": 1.5,
            "ratio_k1": 1.11,
            "memory_ratio": 1.2,
            "kd_bytes": kd,
        },
        {**_row("torchjd", "autojac.backward+jac_to_grad", "parameters", [1, 1, 1], 1), "ratio": 1.6},
        # mtl_backward on chained features: faster but not the method's update, so not a target
        {
            **_row("torchjd", "mtl_backward+jac_to_grad", "parameters", [1, 1, 1], 1),
            "ratio": 1.1,
            "grad_rel_diff": 14.0,
        },
    ]
    ws.add_targets(rows)
    assert rows[0]["targets"] == {"<=1.2x equal": True, "mem<=1.1(equal+KD)": True}
    assert rows[1]["targets"] == {"<=TorchJD": True, "<=1.1x K+1": False, "mem<=1.1 equal": False}
    assert rows[1]["torchjd_best"] == "autojac.backward+jac_to_grad"


def test_markdown_lists_every_row_and_the_load() -> None:
    rows = [
        _row("equal", "-", "-", [1.0, 1.0, 1.0], 100),
        {
            "tasks": 3,
            "family": "mtan",
            "mode": "parameters",
            "method": "upgrad",
            "impl": "mtlkit",
            "path": "batched",
            "supported": False,
            "note": "refused | why",
        },
    ]
    result = {
        "settings": vars(argparse.Namespace(width=0.125, batch_size=2, height=32, image_width=64)),
        "threads": 1,
        "device": "cpu",
        "versions": {"torch": "x", "torchjd": None},
        "rounds": 3,
        "load_before": "0.10 0.20 0.30",
        "load_after": "0.40 0.50 0.60",
        "bench_seconds": 1.0,
        "memory": "m",
        "results": rows,
    }
    text = ws.format_markdown(result)
    table = [line for line in text.splitlines() if line.startswith("| 3 |")]
    assert len(table) == 2 and "n/a: refused / why" in table[1]
    assert "0.10 0.20 0.30 before" in text and "0.40 0.50 0.60 after" in text
    assert len({line.count("|") for line in text.splitlines() if line.startswith("|")}) == 1


@pytest.mark.parametrize("script", ["weighting_step.py", "gpu.py"])
def test_bench_scripts_explain_themselves(script: str) -> None:
    assert "docs/benchmarks.md" in (ROOT / "bench" / script).read_text()
