"""The training loop over objects: one epoch of steps, evaluation, run state, checkpoints, loggers.

:func:`run` is what both entry points call: ``mtlkit train`` (:mod:`mtlkit.train.trainer` builds
the objects from a config) and ``mtlkit.fit`` (:mod:`mtlkit.train.fit` takes them from the user).
It resumes from ``<run>/checkpoints/last.pt`` when there is one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtlkit.errors import TrainingError
from mtlkit.metrics import delta_m
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.records import EpochRecord, RunResults
from mtlkit.tasks import Task
from mtlkit.train import distributed as dist
from mtlkit.train.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.train.evaluate import Evaluation, move_batch
from mtlkit.train.guards import check_validation
from mtlkit.train.hooks import Hook
from mtlkit.train.logging import Logger, Loggers, ended_status, run_files, run_header
from mtlkit.train.rundir import provenance, write_history, write_results
from mtlkit.train.speed import Speed
from mtlkit.train.state import RunState
from mtlkit.train.step import StepRunner
from mtlkit.weighting.base import Weighting


@dataclass
class RunInfo:
    """What results.json says about a run besides its numbers."""

    name: str = "run"
    arch: str = "custom"
    weighting: str = "equal"
    dataset: str = "custom"
    config_hash: str | None = None
    params_ratio: float | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loop:
    """Everything one training run is made of (built by the trainer from a config, or by ``fit``).

    The step's settings are the config's names: ``mode`` and ``grad_path`` (``weighting.*``),
    ``grad_clip`` and ``max_steps_per_epoch`` (``train.*``); ``evaluation`` is its ``eval``
    section. What a run needs beyond these (a bilevel method's meta step, your own callbacks) is a
    :class:`~mtlkit.train.hooks.Hook`.
    """

    model: MultiTaskModel
    tasks: list[Task]
    weighting: Weighting
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device
    epochs: int
    scheduler: Any = None
    mode: str = "parameters"
    grad_path: str = "loop"
    grad_clip: float | None = None
    max_steps_per_epoch: int | None = None
    speed: Speed = field(default_factory=lambda: Speed(None, False, False))
    scaler: torch.amp.GradScaler | None = None
    progress: bool = False
    #: batches may carry only some tasks (DDP then looks for unused parameters every step)
    partial_batches: bool = False
    #: what the checkpoints are for (``checkpoint_meta``), stored in each; None for ``fit`` runs
    meta: dict[str, Any] | None = None
    evaluation: Evaluation = field(default_factory=Evaluation)
    hooks: list[Hook] = field(default_factory=list)


def best_score(val: dict[str, float], reference: dict[str, float], tasks: list[Task]) -> float:
    """delta_m of this epoch's validation metrics against the first epoch's (higher is better)."""
    keys = [f"{t.name}/{m}" for t in tasks for m in t.metrics]
    hib = {f"{t.name}/{m}": hi for t in tasks for m, hi in t.metrics.items()}
    usable = [
        k
        for k in keys
        if k in val and k in reference and reference[k] != 0 and math.isfinite(val[k]) and math.isfinite(reference[k])
    ]
    if not usable:
        return -math.inf
    return delta_m({k: val[k] for k in usable}, {k: reference[k] for k in usable}, {k: hib[k] for k in usable})


def train_epoch(loop: Loop, runner: StepRunner, epoch: int, kept: Path | None = None) -> tuple[Tensor, Tensor]:
    """One epoch of steps: the K mean training losses (over all processes) and the K mean task weights."""
    names = [t.name for t in loop.tasks]
    loader = loop.train_loader
    dist.set_epoch(loader, epoch)
    loop.model.set_epoch(epoch, loop.epochs)
    sums, counts = torch.zeros(len(names)), torch.zeros(len(names))
    wsum, nsteps = torch.zeros(len(names)), 0
    limit = loop.max_steps_per_epoch
    total = min(len(loader), limit) if limit else len(loader)
    bar = tqdm(
        loader,
        total=total,
        desc=f"epoch {epoch + 1}/{loop.epochs}",
        leave=False,
        disable=not (loop.progress and dist.is_main()),
        dynamic_ncols=True,
    )
    for step, batch in enumerate(bar):
        if limit and step >= limit:
            break
        batch = move_batch(batch, loop.device, loop.speed.channels_last)
        try:
            for hook in loop.hooks:
                hook.before_step(loop, batch)
            losses = runner(batch).cpu()
        except TrainingError as err:
            bar.close()
            note = f"; last good checkpoint kept: {kept}" if kept is not None and kept.is_file() else ""
            raise TrainingError(f"epoch {epoch + 1} step {step + 1}: {err}{note}") from None
        for hook in loop.hooks:
            hook.after_step(loop, batch, losses)
        present = torch.tensor([n in runner.present for n in names], dtype=torch.float32)
        sums += losses * present
        counts += present
        wsum += loop.weighting.last_weights.detach().float().cpu()
        nsteps += 1
        bar.set_postfix({n: f"{float(s / max(c, 1)):.3f}" for n, s, c in zip(names, sums, counts)})
    bar.close()
    sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
    # a task with no labelled sample in the whole epoch has no mean loss (NaN: epoch_end methods such
    # as DWA treat it as unknown); the logged value stays 0, as before partial labels
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan), wsum / max(nsteps, 1)


def restore_records(
    run_path: Path, state: RunState, model: nn.Module, meta: dict[str, Any] | None, select_best: bool
) -> None:
    """Make ``metrics.jsonl`` and ``best.pt`` what the committed ``last.pt`` (``state``, ``model``) says.

    A run killed after an epoch's ``last.pt`` but before its ``best.pt`` or ``metrics.jsonl``
    has both one epoch behind; both are derived records, rewritten here before training goes on.
    ``best.pt`` can lag only when the last committed epoch is the best one, whose weights are
    the restored model's.
    """
    write_history(run_path, [r.to_dict() for r in state.history])
    if not select_best or state.best.epoch != state.epoch:
        return
    best_path = run_path / "checkpoints" / "best.pt"
    try:
        if best_path.is_file() and load_checkpoint(best_path).get("epoch") == state.epoch:
            return
    except TrainingError:  # a damaged best.pt of the last epoch: its weights are the restored model's
        pass
    best: dict[str, Any] = {"model": model.state_dict(), "epoch": state.epoch}
    if meta is not None:
        best["meta"] = meta
    save_checkpoint(best_path, best)


def run(
    loop: Loop, run_path: Path, info: RunInfo, loggers: list[Logger] | None = None, state: RunState | None = None
) -> Path:
    """Train ``loop`` into the (existing) ``run_path`` from ``state`` (restored by the caller; None: a new run).

    Every epoch commits with one atomic write, ``checkpoints/last.pt``, which holds everything the
    epoch's other records are made from (the history, the best epoch); ``best.pt`` and
    ``metrics.jsonl`` follow it, and a resume rewrites them from it (:func:`restore_records`), so
    a kill between any two writes leaves a folder that resumes to the same records. results.json
    comes last, once.
    """
    main = dist.is_main()
    model, weighting, device, tasks = loop.model, loop.weighting, loop.device, loop.tasks
    ckpt_path = run_path / "checkpoints" / "last.pt"
    state = state if state is not None else RunState()
    if loop.speed.channels_last:  # in place (Module.to returns the module); torch's stubs lack memory_format
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # compile the model itself, DDP outside: gradient methods and evaluation call the compiled
    # module directly (runner.plain), bypassing DDP's gradient hooks
    compiled = cast(nn.Module, torch.compile(model)) if loop.speed.compile else model
    net = dist.wrap(compiled, device, partial_batches=loop.partial_batches)
    runner = StepRunner(
        net,
        weighting,
        tasks,
        loop.optimizer,
        loop.mode,
        loop.grad_clip,
        loop.speed.autocast_dtype,
        loop.scaler,
        loop.grad_path,
    )  # forward + Balancer + optimizer
    dist.set_epoch(loop.train_loader, state.epoch)
    logs = Loggers(list(loggers or []) if main else [])
    t0 = time.time() - state.wall_time
    select_best = loop.evaluation.select_best
    if main and state.epoch > 0:
        restore_records(run_path, state, model, loop.meta, select_best)
    if main and loop.progress:
        tqdm.write(
            run_header(
                run_path,
                info.arch,
                count_parameters(model),
                loop.train_loader,
                loop.val_loader,
                loop.max_steps_per_epoch,
            )
        )
    try:
        for hook in loop.hooks:
            hook.before_train(loop)
        for epoch in range(state.epoch, loop.epochs):
            for hook in loop.hooks:
                hook.before_epoch(loop, epoch)
            record = _train_and_evaluate(loop, runner, epoch, t0, ckpt_path)
            if state.reference is None:  # the first epoch's scores: what later epochs are compared with
                state.reference = dict(record.val)
            is_best = state.record(record, best_score(record.val, state.reference, tasks)) and select_best
            if main:
                _commit_epoch(loop, state, run_path, record, is_best=is_best, t0=t0)
                logs.log_epoch(record)
            dist.barrier()
            for hook in loop.hooks:
                hook.after_epoch(loop, record)
        for hook in loop.hooks:
            hook.after_train(loop)
    except BaseException as err:
        logs.finish(ended_status(err))
        raise
    if main:
        write_results(run_path, _results(loop, info, state, t0).to_dict())
        for path in run_files(run_path):  # results.json, config.yaml, metrics.jsonl, figures
            logs.log_artifact(path)
        logs.finish("finished")
    return run_path


def _train_and_evaluate(loop: Loop, runner: StepRunner, epoch: int, t0: float, ckpt_path: Path) -> EpochRecord:
    """One epoch: train, step the method's and the scheduler's epoch state, evaluate; the epoch's record.

    Nothing is recorded or written here: the caller records it in ``state`` and commits it.
    """
    model, weighting, device, tasks = loop.model, loop.weighting, loop.device, loop.tasks
    names = [t.name for t in tasks]
    ep_start = time.time()
    model.train()
    mean_losses, mean_weights = train_epoch(loop, runner, epoch, ckpt_path)
    weighting.epoch_end(epoch, mean_losses.to(device))
    if loop.scheduler is not None:
        loop.scheduler.step()
    dist.broadcast_buffers(model)  # BatchNorm statistics of rank 0 (the checkpointed ones) everywhere
    val = loop.evaluation(
        runner.plain,
        tasks,
        loop.val_loader,
        device,
        channels_last=loop.speed.channels_last,
        autocast_dtype=loop.speed.autocast_dtype,
    )
    check_validation(val, epoch + 1, ckpt_path)
    return EpochRecord(
        epoch=epoch + 1,
        time=time.time() - t0,
        epoch_time=time.time() - ep_start,
        lr=loop.optimizer.param_groups[0]["lr"],
        train={f"loss/{n}": float(v) for n, v in zip(names, mean_losses.nan_to_num(0.0))},
        val=val,
        weights={n: float(w) for n, w in zip(names, mean_weights)},
    )


def _commit_epoch(
    loop: Loop, state: RunState, run_path: Path, record: EpochRecord, *, is_best: bool, t0: float
) -> None:
    """Commit the epoch ``state`` recorded: ``last.pt`` (one atomic write), then ``best.pt`` if it is the best."""
    state.wall_time = time.time() - t0
    ckpt = state.checkpoint(loop.model, loop.weighting, loop.optimizer, loop.scheduler, loop.scaler)
    best = {"model": ckpt["model"], "epoch": record.epoch}
    if loop.meta is not None:
        ckpt["meta"] = best["meta"] = loop.meta
    save_checkpoint(run_path / "checkpoints" / "last.pt", ckpt)
    if is_best:
        save_checkpoint(run_path / "checkpoints" / "best.pt", best)


def _results(loop: Loop, info: RunInfo, state: RunState, t0: float) -> RunResults:
    """results.json of the finished run."""
    select_best = loop.evaluation.select_best
    return RunResults(
        name=info.name,
        arch=info.arch,
        weighting=info.weighting,
        dataset=info.dataset,
        tasks=[t.to_dict() for t in loop.tasks],
        params=count_parameters(loop.model),
        params_ratio=info.params_ratio,
        final=state.history[-1].val if state.history else {},
        best=state.best.val if select_best else None,
        best_epoch=state.best.epoch if select_best else None,
        epochs=loop.epochs,
        wall_time=time.time() - t0,
        config_hash=info.config_hash,
        **provenance(),
        status="finished",
        extra={
            **({"capabilities": info.capabilities} if info.capabilities else {}),
            **results_extra(loop),
            **({"config_changes": state.config_changes} if state.config_changes else {}),
        },
    )


def results_extra(loop: Loop) -> dict[str, Any]:
    """results.json fields beyond the schema's: the path the per-task gradients took (``grad_path``:
    ``loop`` / ``batched`` / ``gramian``, or ``combine`` for a loss-level method), the evaluation's,
    then each hook's (a bilevel method's split)."""
    extra: dict[str, Any] = {"grad_path": loop.grad_path if loop.weighting.needs_gradients else "combine"}
    extra.update(loop.evaluation.results())
    for hook in loop.hooks:
        extra.update(hook.results())
    return extra
