"""The training loop: builds everything from a Config, trains, evaluates, checkpoints, resumes.

It orchestrates only: models, weighting methods, datasets and metrics come from the registries
and meet through their small interfaces (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtlkit.config import Config, load_config
from mtlkit.data.base import DatasetBuilder
from mtlkit.errors import ConfigError, MtlkitError, TrainingError
from mtlkit.metrics import delta_m
from mtlkit.models import build_model
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.registry import DATASETS, WEIGHTINGS
from mtlkit.tasks import Task
from mtlkit.train import distributed as dist
from mtlkit.train.checkpoint import (
    MODEL_KEYS,
    checkpoint_meta,
    load_checkpoint,
    load_model_weights,
    restore_training_state,
    resume_state,
    save_checkpoint,
)
from mtlkit.train.evaluate import evaluate, move_batch
from mtlkit.train.guards import check_validation, preflight
from mtlkit.train.rundir import (
    failures_recorded,
    open_run_dir,
    provenance,
    read_results,
    write_history,
    write_results,
)
from mtlkit.train.runtime import rng_state, seed_everything, select_device
from mtlkit.train.step import StepRunner
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
    model = build_model(cfg.model.arch, tasks, width=cfg.model.width, backbone=cfg.model.backbone,
                        pretrained=cfg.model.pretrained, **cfg.model.options)
    weighting = build_weighting(cfg, tasks)
    device = device or select_device(cfg.train.device)
    return Setup(cfg, builder, tasks, model.to(device), weighting.to(device), device)


def make_loader(builder: DatasetBuilder, dataset, cfg: Config, train: bool, epoch: int = 0) -> DataLoader:
    """A loader whose sample order depends only on (seed, epoch), not on the processes or workers.

    Build it once and call ``dist.set_epoch(loader, epoch)`` before each epoch: the sampler and the
    dataset's augmentation move to that epoch, so workers can persist across epochs (they do when
    the dataset derives its randomness from the epoch, i.e. has ``set_epoch``). Training batches
    are global (``train.batch_size`` split over the processes); evaluation batches are per process.
    """
    bs = cfg.train.batch_size if train else (cfg.train.eval_batch_size or cfg.train.batch_size)
    workers = cfg.train.num_workers
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0 and hasattr(dataset, "set_epoch"),
    }
    if hasattr(builder, "batch_sampler"):
        def batches(e: int) -> list[list[int]]:
            return builder.batch_sampler(dataset, bs, shuffle=train, seed=cfg.seed, epoch=e)

        loader = DataLoader(dataset, batch_sampler=dist.EpochBatches(batches, train), **kwargs)
    elif train:
        sampler, local_bs, drop_last = dist.train_sampler(dataset, bs, cfg.seed)
        loader = DataLoader(dataset, batch_size=local_bs, sampler=sampler, drop_last=drop_last, **kwargs)
    else:
        loader = DataLoader(dataset, batch_size=bs, sampler=dist.eval_sampler(dataset), **kwargs)
    dist.set_epoch(loader, epoch)
    return loader


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


def _best_score(val: dict[str, float], reference: dict[str, float], tasks: list[Task]) -> float:
    """delta_m of this epoch's validation metrics against the first epoch's (higher is better)."""
    keys = [f"{t.name}/{m}" for t in tasks for m in t.metrics]
    hib = {f"{t.name}/{m}": hi for t in tasks for m, hi in t.metrics.items()}
    usable = [k for k in keys if k in val and k in reference and reference[k] != 0
              and math.isfinite(val[k]) and math.isfinite(reference[k])]
    if not usable:
        return -math.inf
    return delta_m({k: val[k] for k in usable}, {k: reference[k] for k in usable}, {k: hib[k] for k in usable})


def _task_info(tasks: list[Task]) -> list[dict[str, Any]]:
    return [t.to_dict() for t in tasks]


def params_ratio(cfg: Config, tasks: list[Task], model: MultiTaskModel) -> float | None:
    """#P as the MTAN paper reports it: parameters relative to one single-task network."""
    from mtlkit.models.params import single_task_parameters

    base = single_task_parameters(cfg.model.arch, tasks, cfg.model.width, backbone=cfg.model.backbone,
                                  **cfg.model.options)
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
        plan: tuple[Config, Path, bool] | MtlkitError | None = None
        if dist.is_main():
            try:
                plan = _resolve_run(cfg, resume, run_dir)
            except MtlkitError as err:
                plan = err
        plan = dist.broadcast_object(plan)
        if isinstance(plan, MtlkitError):
            raise plan
        cfg, run_path, finished = plan
        with failures_recorded():
            return run_path if finished else _train(cfg, run_path)
    finally:
        dist.cleanup()


def _resolve_run(
    cfg: Config | None, resume: str | Path | None, run_dir: str | Path | None
) -> tuple[Config, Path | None, bool]:
    """``(config, run folder, already finished)`` of the run to resume or to start (None: claim a new folder)."""
    if resume is not None:
        run_path = Path(resume)
        if not (run_path / "config.yaml").is_file():
            raise ConfigError(f"{run_path}: not a run folder (no config.yaml)")
        done = read_results(run_path)
        return load_config(run_path / "config.yaml"), run_path, bool(done and done.get("status") == "finished")
    assert cfg is not None
    return cfg, Path(run_dir) if run_dir is not None else None, False


def _train(cfg: Config, run_path: Path | None) -> Path:
    main = dist.is_main()
    setup = build(cfg, dist.device_for(cfg.train.device))
    tasks, weighting, device = setup.tasks, setup.weighting, setup.device
    dist.check_weighting(weighting)
    model = dist.convert_sync_batchnorm(setup.model, device) if _sync_bn(cfg) else setup.model
    with dist.main_first():  # rank 0 renders / checks a dataset cache before the others read it
        train_ds = setup.builder.dataset("train", train=True)
        val_ds = setup.builder.dataset("val", train=False)
    optimizer = make_optimizer(cfg, model, weighting)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.optim.step_size, gamma=cfg.optim.gamma)
    from mtlkit.train.speed import speed_settings

    speed = speed_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if speed.autocast_dtype == torch.float16 else None

    history: list[dict[str, Any]] = []
    start_epoch, best, reference, wall_before = 0, {"score": -math.inf, "epoch": 0, "val": {}}, None, 0.0
    meta = checkpoint_meta(cfg, tasks)
    # rank 0 reads the checkpoint and shares it: any world size resumes the same run
    state = resume_state(run_path / "checkpoints" / "last.pt" if run_path is not None else None, meta)
    if state is not None:
        restore_training_state(run_path / "checkpoints" / "last.pt", state, model, weighting, optimizer, scheduler,
                               scaler)
        start_epoch, best, reference = state["epoch"], state["best"], state["reference"]
        history, wall_before = state["history"], state["wall_time"]

    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # compile the model itself, DDP outside: gradient methods and evaluation call the compiled
    # module directly (runner.plain), bypassing DDP's gradient hooks
    compiled: nn.Module = torch.compile(model) if speed.compile else model
    net = dist.wrap(compiled, device, partial_batches=hasattr(setup.builder, "batch_sampler"))
    runner = StepRunner(net, weighting, tasks, optimizer, cfg.weighting.mode, cfg.train.grad_clip,
                        speed.autocast_dtype, scaler)
    loader = make_loader(setup.builder, train_ds, cfg, train=True, epoch=start_epoch)
    val_loader = make_loader(setup.builder, val_ds, cfg, train=False)
    preflight(model, tasks, {"train": train_ds, "val": val_ds}, device)
    run_path = dist.broadcast_object(open_run_dir(run_path, cfg) if main else None)
    ckpt_path = run_path / "checkpoints" / "last.pt"
    writer = _tensorboard(run_path, cfg) if main else None
    n_params = count_parameters(model)
    ratio = params_ratio(cfg, tasks, model)
    t0 = time.time() - wall_before
    names = [t.name for t in tasks]
    for epoch in range(start_epoch, cfg.train.epochs):
        ep_start = time.time()
        model.train()
        dist.set_epoch(loader, epoch)
        setup.model.set_epoch(epoch, cfg.train.epochs)
        sums, counts = torch.zeros(len(tasks)), torch.zeros(len(tasks))
        wsum, nsteps = torch.zeros(len(tasks)), 0
        limit = cfg.train.max_steps_per_epoch
        total = min(len(loader), limit) if limit else len(loader)
        bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   disable=not (cfg.train.progress and main), dynamic_ncols=True)
        for step, batch in enumerate(bar):
            if limit and step >= limit:
                break
            batch = move_batch(batch, device, speed.channels_last)
            try:
                losses = runner(batch).cpu()
            except TrainingError as err:
                bar.close()
                kept = f"; last good checkpoint kept: {ckpt_path}" if ckpt_path.is_file() else ""
                raise TrainingError(f"epoch {epoch + 1} step {step + 1}: {err}{kept}") from None
            present = torch.tensor([n in batch for n in names], dtype=torch.float32)
            sums += losses * present
            counts += present
            wsum += weighting.last_weights.detach().float().cpu()
            nsteps += 1
            bar.set_postfix({n: f"{float(s / max(c, 1)):.3f}" for n, s, c in zip(names, sums, counts)})
        bar.close()
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        mean_losses = sums / counts.clamp(min=1)
        weighting.epoch_end(epoch, mean_losses.to(device))
        scheduler.step()
        dist.broadcast_buffers(model)  # BatchNorm statistics of rank 0 (the checkpointed ones) everywhere
        val = evaluate(runner.plain, tasks, val_loader, device,
                       channels_last=speed.channels_last, autocast_dtype=speed.autocast_dtype)
        check_validation(val, epoch + 1, ckpt_path)
        if reference is None:
            reference = dict(val)
        score = _best_score(val, reference, tasks)
        record = {
            "epoch": epoch + 1,
            "time": time.time() - t0,
            "epoch_time": time.time() - ep_start,
            "lr": optimizer.param_groups[0]["lr"],
            "train": {f"loss/{n}": float(v) for n, v in zip(names, mean_losses)},
            "val": val,
            "weights": {n: float(w) for n, w in zip(names, wsum / max(nsteps, 1))},
        }
        history.append(record)
        is_best = score > best["score"] or best["epoch"] == 0
        if is_best:
            best = {"score": score, "epoch": epoch + 1, "val": val}
        if main:
            state = {
                "model": model.state_dict(), "weighting": weighting.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(), "epoch": epoch + 1, "best": best, "reference": reference,
                "history": history, "wall_time": time.time() - t0, "meta": meta,
            }
            save_checkpoint(ckpt_path, state)
            if is_best:
                best_state = {"model": state["model"], "epoch": epoch + 1, "meta": meta}
                save_checkpoint(run_path / "checkpoints" / "best.pt", best_state)
            write_history(run_path, history)
            _log_tensorboard(writer, record)
            if cfg.train.progress:
                tqdm.write(_epoch_line(record, tasks))
        dist.barrier()
    if writer is not None:
        writer.close()
    if main:
        results = {
            "name": cfg.name, "arch": cfg.model.arch, "weighting": cfg.weighting.name,
            "dataset": cfg.dataset.name, "tasks": _task_info(tasks), "params": n_params,
            "params_ratio": ratio, "final": history[-1]["val"] if history else {},
            "best": best["val"], "best_epoch": best["epoch"], "epochs": cfg.train.epochs,
            "wall_time": time.time() - t0, "config_hash": cfg.hash(), **provenance(), "status": "finished",
        }
        write_results(run_path, results)
    return run_path


def _sync_bn(cfg: Config) -> bool:
    """Synchronised BatchNorm under DDP: ``train.sync_bn`` when the config has it, else on."""
    value = getattr(cfg.train, "sync_bn", None)
    return True if value is None else bool(value)


def _epoch_line(record: dict[str, Any], tasks: list[Task]) -> str:
    parts = [f"epoch {record['epoch']:>3}"]
    for t in tasks:
        key = f"{t.name}/{t.main_metric}"
        if key in record["val"]:
            loss = record["train"][f"loss/{t.name}"]
            parts.append(f"{t.name} loss {loss:.3f} {t.main_metric} {record['val'][key]:.4g}")
    return " | ".join(parts) + f" | {record['epoch_time']:.1f}s"


def _tensorboard(run_path: Path, cfg: Config):
    if not cfg.train.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_path / "tb"))


def _log_tensorboard(writer, record: dict[str, Any]) -> None:
    if writer is None:
        return
    step = record["epoch"]
    for section in ("train", "val"):
        for k, v in record[section].items():
            writer.add_scalar(f"{section}/{k}", v, step)
    for k, v in record["weights"].items():
        writer.add_scalar(f"weights/{k}", v, step)
    writer.add_scalar("lr", record["lr"], step)
    writer.flush()


def load_run(
    run_dir: str | Path, which: str = "best", device: str = "cpu"
) -> tuple[Config, MultiTaskModel, list[Task], DatasetBuilder]:
    """Config, trained model (``best`` or ``last`` weights), tasks and dataset builder of a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    setup = build(cfg, torch.device(device))
    ckpt = run_dir / "checkpoints" / f"{which}.pt"
    if which == "best" and not ckpt.is_file() and ckpt.with_name("last.pt").is_file():
        raise TrainingError(f"{ckpt}: not found (the run saved no best checkpoint); "
                            "use --checkpoint last to evaluate its last epoch")
    expect = {k: v for k, v in checkpoint_meta(cfg, setup.tasks).items() if k in MODEL_KEYS}
    load_model_weights(ckpt, setup.model, load_checkpoint(ckpt, map_location=device, expect=expect))
    setup.model.eval()
    return cfg, setup.model, setup.tasks, setup.builder
