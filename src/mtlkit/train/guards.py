"""Checks that stop a run with a one-line reason: before its folder exists, and after each validation.

:func:`preflight` finds what would otherwise fail in the first step, after the run folder was
made (an image size the model cannot take, an unreadable first sample): the run then leaves no
folder behind. :func:`check_validation` treats a non-finite validation value like a non-finite
training loss: the run stops, naming the task, before that epoch's checkpoint is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from mtlkit.errors import ConfigError, DataError, TrainingError, shorten
from mtlkit.tasks import Task
from mtlkit.train.runtime import rng_state, set_rng_state


def preflight(model: nn.Module, tasks: list[Task], datasets: Mapping[str, Dataset], device: torch.device) -> None:
    """Read the first sample of each split and run ``model`` once on the last one (eval mode, no grad).

    Every random state is restored afterwards (some datasets draw augmentation from the global
    generators), and the model goes back to training mode, so the run's numbers do not change.
    """
    saved = rng_state()
    try:
        sample = None
        for split, ds in datasets.items():
            if len(cast(Sized, ds)) == 0:  # map-style datasets (torch's Dataset declares no __len__)
                raise DataError(f"the {split} split has no samples")
            sample = ds[0]
        if sample is None:
            return
        check_forward(model, tasks, default_collate([sample]), device)
    finally:
        set_rng_state(saved)


def check_forward(model: nn.Module, tasks: Sequence[Task], batch: Mapping[str, Any], device: torch.device) -> None:
    """Run ``model`` once on ``batch`` (eval mode, no grad): it must predict every task the batch carries.

    A batch without ``image`` or an output without a task is a ConfigError naming what is missing.
    """
    if "image" not in batch:
        raise ConfigError(f"a batch has no 'image' (its keys: {shorten(sorted(map(str, batch)))})")
    present = [t.name for t in tasks if t.name in batch]
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch["image"].to(device), present)
    finally:
        model.train()
    if not isinstance(out, Mapping):
        raise ConfigError(f"the model returned a {type(out).__name__}, expected a dict {{task name: output}}")
    missing = [n for n in present if n not in out]
    if missing:
        raise ConfigError(
            f"the model's output has no {', '.join(map(repr, missing))} (it returned "
            f"{shorten(sorted(map(str, out)))}); it must return {{task name: output}} for every task"
        )


def check_validation(val: dict[str, float], epoch: int, checkpoint: Path | None) -> None:
    """Raise a one-line TrainingError when a validation loss or metric of ``epoch`` is NaN or infinite."""
    bad = {k: v for k, v in val.items() if not math.isfinite(v)}
    if not bad:
        return
    tasks = sorted({k.split("/")[1] if k.startswith("loss/") else k.split("/")[0] for k in bad})
    values = ", ".join(f"{k}={v}" for k, v in bad.items())
    kept = f"; last good checkpoint kept: {checkpoint}" if checkpoint is not None and checkpoint.is_file() else ""
    raise TrainingError(
        f"epoch {epoch} validation: non-finite value for task {', '.join(tasks)} ({values}); "
        f"the run diverged (lower optim.lr?){kept}"
    )
