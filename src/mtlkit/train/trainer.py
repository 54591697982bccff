"""``mtlkit train``: builds a run's objects from a Config and hands them to the loop.

Models, weighting methods, datasets and metrics come from the registries and meet through their
small interfaces (see docs/ARCHITECTURE.md); the loop itself (:mod:`mtlkit.train.loop`) is the one
``mtlkit.fit`` runs too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mtlkit._deprecation import pop_renamed
from mtlkit.balance import checked_grad_path
from mtlkit.config import Config, load_config
from mtlkit.data import sampling
from mtlkit.data.base import DatasetBuilder
from mtlkit.data.partial import LabelFraction
from mtlkit.errors import ConfigError, MtlkitError, TrainingError
from mtlkit.models import build_model
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.registry import DATASETS, WEIGHTINGS
from mtlkit.tasks import Task
from mtlkit.tasks.base import LABELLED_SUFFIX
from mtlkit.trackers import check_loggers, config_loggers
from mtlkit.train import distributed as dist
from mtlkit.train.checkpoint import (
    MODEL_KEYS,
    checkpoint_meta,
    load_checkpoint,
    load_model_weights,
    restore_training_state,
    resume_changes,
    resume_state,
)
from mtlkit.train.evaluate import Evaluation
from mtlkit.train.guards import preflight
from mtlkit.train.hooks import Hook, MetaStep, RunRecord
from mtlkit.train.logging import ConsoleLogger, JsonlLogger, Loggers, run_logging
from mtlkit.train.loop import Loop, RunInfo, run
from mtlkit.train.rundir import (
    check_new_run_dir,
    failures_recorded,
    lock_run_dir,
    open_run_dir,
    read_results_safely,
    run_locks,
)
from mtlkit.train.runtime import seed_everything, select_device
from mtlkit.train.state import RunState
from mtlkit.train.step import check_mode
from mtlkit.weighting import meta_split
from mtlkit.weighting.base import Weighting


@dataclass
class Setup:
    """Everything a run is built from, before any training."""

    cfg: Config
    builder: DatasetBuilder
    tasks: list[Task]
    model: MultiTaskModel
    weighting: Weighting
    device: torch.device


def build_weighting(cfg: Config, tasks: list[Task]) -> Weighting:
    """The configured weighting method; an unknown option is a ConfigError naming it."""
    cls = WEIGHTINGS.get(cfg.weighting.name)
    try:
        return cls([t.name for t in tasks], **cfg.weighting.options)
    except TypeError as err:
        raise ConfigError(f"weighting.options for {cfg.weighting.name!r}: {err}") from None


def build(cfg: Config, device: torch.device | None = None) -> Setup:
    """Dataset builder, tasks, model and weighting method for ``cfg`` (seeded)."""
    seed_everything(cfg.seed)
    builder = DATASETS.get(cfg.dataset.name)(cfg.dataset)
    tasks = builder.tasks()
    model = build_model(
        cfg.model.arch,
        tasks,
        width=cfg.model.width,
        backbone=cfg.model.backbone,
        pretrained=cfg.model.pretrained,
        align_corners=cfg.model.align_corners,
        **cfg.model.options,
    )
    weighting = build_weighting(cfg, tasks)
    device = device or select_device(cfg.train.device)
    return Setup(cfg, builder, tasks, model.to(device), weighting.to(device), device)


def make_loader(builder: DatasetBuilder, dataset, cfg: Config, train: bool, epoch: int = 0) -> DataLoader:
    """The loader of a split for ``cfg`` (:func:`mtlkit.data.sampling.make_loader`; the builder may batch)."""
    bs = cfg.train.batch_size if train else (cfg.train.eval_batch_size or cfg.train.batch_size)
    batches = None
    sampler = builder.batch_sampler
    if sampler is not None:

        def batches(e: int) -> list[list[int]]:
            return sampler(dataset, bs, shuffle=train, seed=cfg.seed, epoch=e)

    return sampling.make_loader(dataset, bs, train, cfg.seed, epoch, cfg.train.num_workers, batches)


def make_optimizer(cfg: Config, model: MultiTaskModel, weighting: Weighting) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameter groups and the method's own parameters.

    Adam and AdamW use torch's fused kernel where it has one for the parameters' device (CUDA;
    CPU since torch 2.4): the same update up to float rounding (~1e-8 after 8 steps), one pass
    over each tensor instead of several, and it honours a GradScaler. On CPU the optimizer step
    of a full-width MTAN (44M parameters) is ~6x faster, the whole training step 1.03-1.05x
    (bench/train_step.py). Elsewhere the default implementation.
    """
    groups = model.param_groups(cfg.optim.lr)
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": cfg.optim.lr})
    o = cfg.optim
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        try:  # fresh group dicts each time: the constructor writes its settings into them
            return cls([dict(g) for g in groups], lr=o.lr, weight_decay=o.weight_decay, fused=True)
        except (RuntimeError, ValueError, TypeError):  # no fused kernel for these tensors / this torch
            return cls([dict(g) for g in groups], lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def params_ratio(cfg: Config, tasks: list[Task], model: MultiTaskModel) -> float | None:
    """#P as the MTAN paper reports it: parameters relative to one single-task network."""
    from mtlkit.models.params import single_task_parameters

    base = single_task_parameters(
        cfg.model.arch, tasks, cfg.model.width, backbone=cfg.model.backbone, **cfg.model.options
    )
    return count_parameters(model) / base if base else None


def train(cfg: Config | None = None, resume: str | Path | None = None, run_dir: str | Path | None = None) -> Path:
    """Train ``cfg`` into a new run folder, or continue the run in ``resume``; returns the folder.

    Under torchrun, rank 0 resolves the run folder and config and shares them, so only rank 0 needs
    to see the run folder (no shared file system needed, also for resuming on other nodes).
    """
    if resume is None and cfg is None:
        raise ValueError("train() needs a config or a run folder to resume")
    dist.init()
    try:
        with run_locks():
            plan: tuple[Config, Path | None, bool] | MtlkitError | None = None
            if dist.is_main():
                try:
                    plan = _resolve_run(cfg, resume, run_dir)
                except MtlkitError as err:
                    plan = err
            plan = dist.broadcast_object(plan)
            if isinstance(plan, MtlkitError):
                raise plan
            cfg, run_path, finished = plan
            if finished:
                assert run_path is not None  # only a resumed run can have finished
                return run_path
            with failures_recorded(), run_logging() as logs:
                return _train(cfg, run_path, logs, resuming=resume is not None)
    finally:
        dist.cleanup()


def _resolve_run(
    cfg: Config | None, resume: str | Path | None, run_dir: str | Path | None
) -> tuple[Config, Path | None, bool]:
    """``(config, run folder, already finished)`` of the run to resume or to start (None: claim a new folder).

    A folder that exists is locked here (a second trainer of it is refused before anything is
    built) and checked: ``--run-dir`` must not hold a run, ``--resume`` must hold one.
    """
    if resume is not None:
        run_path = Path(resume)
        if not (run_path / "config.yaml").is_file():
            raise ConfigError(f"{run_path}: not a run folder (no config.yaml)")
        lock_run_dir(run_path)
        done = read_results_safely(run_path)
        saved = load_config(run_path / "config.yaml")
        finished = done is not None and done.get("status") == "finished"
        if done is not None and finished and done.get("config_hash") not in (None, saved.hash()):
            raise ConfigError(
                f"{run_path}: the run finished, and its config.yaml was edited since (config hash "
                f"{saved.hash()}, results.json says {done.get('config_hash')}); a finished run is "
                "never trained again: start a new run with the edited config (--run-dir NEW)"
            )
        return saved, run_path, finished
    assert cfg is not None
    check_loggers(cfg.train.loggers, cfg.train.tracker_options)
    if run_dir is None:
        return cfg, None, False
    if Path(run_dir).is_dir():
        lock_run_dir(Path(run_dir))
    check_new_run_dir(Path(run_dir), cfg)
    return cfg, Path(run_dir), False


def _train(cfg: Config, run_path: Path | None, logs: Loggers, resuming: bool = False) -> Path:
    """Build the run's objects from ``cfg``, check them, and hand them to the loop (:func:`mtlkit.train.loop.run`)."""
    main = dist.is_main()
    setup = build(cfg, dist.device_for(cfg.train.device))
    tasks, weighting, device = setup.tasks, setup.weighting, setup.device
    dist.check_weighting(weighting)
    check_mode(setup.model, weighting, cfg.weighting.mode)
    checked_grad_path(cfg.weighting.grad_path, weighting)  # gramian with a method that needs G: before any work
    # BatchNorm over the global batch under torchrun (always: there is no setting); a no-op in one process
    model = dist.convert_sync_batchnorm(setup.model, device)
    with dist.main_first():  # rank 0 renders / checks a dataset cache before the others read it
        train_ds = setup.builder.dataset("train", train=True)
        val_ds = setup.builder.dataset("val", train=False)
    hooks: list[Hook] = []
    if cfg.dataset.label_fraction:  # a seeded, fixed subset of some tasks' training labels
        train_ds = LabelFraction(train_ds, tasks, cfg.dataset.label_fraction, seed=cfg.seed)
        hooks.append(RunRecord({"label_fraction": train_ds.describe()}))
    # partially labelled data: the tasks of a step (and with them the heads it uses) change from step to step
    partial = any(k.endswith(LABELLED_SUFFIX) for ds in (train_ds, val_ds) for k in ds[0])
    if weighting.needs_meta_step:  # a bilevel method: its meta batches come from a split of the training set
        train_ds, split = meta_split(
            weighting, train_ds, cfg.seed, cfg.train.batch_size, setup.builder.batch_sampler is not None
        )
        if split is not None:
            hooks.append(MetaStep(split))
    optimizer = make_optimizer(cfg, model, weighting)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.optim.step_size, gamma=cfg.optim.gamma)
    from mtlkit.train.speed import speed_settings

    speed = speed_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if speed.autocast_dtype == torch.float16 else None
    meta = checkpoint_meta(cfg, tasks)
    # rank 0 reads the checkpoint and shares it: any world size resumes the same run
    last = run_path / "checkpoints" / "last.pt" if run_path is not None else None
    ckpt = resume_state(last, meta)
    if ckpt is None:  # a fresh run: one-task initialisation (a resumed run's checkpoint holds its weights)
        from mtlkit.train.init_from import apply_init_from

        apply_init_from(cfg, setup.model)
    state = None
    if ckpt is not None:
        assert run_path is not None and last is not None
        restore_training_state(last, ckpt, model, weighting, optimizer, scheduler, scaler)
        state = RunState.from_checkpoint(ckpt, last)
        state.config_changes += resume_changes(run_path, ckpt.get("meta"), cfg, state.epoch)
    loop = Loop(
        model=model,
        tasks=tasks,
        weighting=weighting,
        optimizer=optimizer,
        train_loader=make_loader(setup.builder, train_ds, cfg, train=True),
        val_loader=make_loader(setup.builder, val_ds, cfg, train=False),
        device=device,
        epochs=cfg.train.epochs,
        scheduler=scheduler,
        mode=cfg.weighting.mode,
        grad_path=cfg.weighting.grad_path,
        grad_clip=cfg.train.grad_clip,
        max_steps_per_epoch=cfg.train.max_steps_per_epoch,
        speed=speed,
        scaler=scaler,
        progress=cfg.train.progress,
        partial_batches=partial or setup.builder.batch_sampler is not None,
        meta=meta,
        evaluation=Evaluation.from_config(cfg),
        hooks=hooks,
    )
    preflight(model, tasks, {"train": train_ds, "val": val_ds}, device)
    run_path = dist.broadcast_object(open_run_dir(run_path, cfg, resume=resuming) if main else None)
    info = RunInfo(
        name=cfg.name,
        arch=cfg.model.arch,
        weighting=cfg.weighting.name,
        dataset=cfg.dataset.name,
        config_hash=cfg.hash(),
        params_ratio=params_ratio(cfg, tasks, model),
        capabilities=model.capabilities(),
    )
    if main:
        logs.add(
            JsonlLogger(run_path, state.history if state is not None else []), *config_loggers(cfg, run_path)
        )  # tensorboard, mlflow, wandb: train.loggers
        if cfg.train.progress:
            logs.add(ConsoleLogger(tasks))
        logs.log_params(cfg.to_dict())
    return run(loop, run_path, info, [logs], state)


def load_run(
    run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", **deprecated: Any
) -> tuple[Config, MultiTaskModel, list[Task], DatasetBuilder]:
    """Config, trained model (the ``best`` or ``last`` checkpoint's weights), tasks and dataset builder of a run.

    ``checkpoint`` is ``mtlkit evaluate --checkpoint`` (its old name ``which=`` still works, with a warning).
    """
    if "which" in deprecated:
        checkpoint = pop_renamed(deprecated, "which", "checkpoint", "load_run")
    if deprecated:
        raise TypeError(f"load_run() got an unexpected keyword argument {next(iter(deprecated))!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    setup = build(cfg, torch.device(device))
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not ckpt.is_file() and ckpt.with_name("last.pt").is_file():
        raise TrainingError(
            f"{ckpt}: not found (the run saved no best checkpoint); use --checkpoint last to evaluate its last epoch"
        )
    expect = {k: v for k, v in checkpoint_meta(cfg, setup.tasks).items() if k in MODEL_KEYS}
    load_model_weights(ckpt, setup.model, load_checkpoint(ckpt, map_location=device, expect=expect))
    setup.model.eval()
    return cfg, setup.model, setup.tasks, setup.builder
