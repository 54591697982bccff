"""``mtlkit.fit``: train objects you made (model, tasks, datasets, weighting) with mtlkit's loop.

The same loop as ``mtlkit train`` (:func:`mtlkit.train.loop.run`) into the same run folder format:
``config.yaml`` (what ran, as far as the objects say: registered names where the classes are
registered), ``metrics.jsonl``, ``results.json`` (#P where the model came from ``build_model``),
``tb/`` (TensorBoard: ``loggers``, on by default), checkpoints every epoch (a second call with the same
``run_dir`` continues an interrupted run; one that finished is refused). Progress is shown by
default where a terminal is attached.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mtlkit.balance import checked_grad_path
from mtlkit.config import config_from_dict, folder_name_problem, save_config
from mtlkit.data.sampling import make_loader
from mtlkit.errors import ConfigError, MtlkitError, TrainingError, shorten
from mtlkit.io import atomic_write_text, output_error
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.registry import ARCHITECTURES, DATASETS, WEIGHTINGS, Registry
from mtlkit.tasks import Task
from mtlkit.tasks.base import LABELLED_SUFFIX
from mtlkit.trackers import open_loggers, split_loggers
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.evaluate import Evaluation
from mtlkit.train.guards import check_forward
from mtlkit.train.hooks import Hook
from mtlkit.train.logging import ConsoleLogger, JsonlLogger, Logger, run_logging
from mtlkit.train.loop import Loop, RunInfo, run
from mtlkit.train.rundir import clean_interrupted_writes, lock_run_dir, read_results_safely, run_locks
from mtlkit.train.runtime import rng_state, seed_everything, select_device, set_rng_state
from mtlkit.train.speed import Speed
from mtlkit.train.state import RunState
from mtlkit.weighting.base import Weighting


class ModuleModel(MultiTaskModel):
    """Any ``nn.Module`` returning ``{task: output}`` as a :class:`MultiTaskModel`.

    ``shared``: the parameters every task depends on (what gradient methods balance); a module or
    a list of parameters. Without it, gradient-level methods cannot run (loss-level ones can).
    """

    supports_representation = False

    def __init__(
        self, module: nn.Module, tasks: Sequence[Task], shared: nn.Module | Sequence[Tensor] | None = None
    ) -> None:
        super().__init__(list(tasks))
        self.module = module
        self._shared: list[nn.Parameter] | None = (
            list(shared.parameters())
            if isinstance(shared, nn.Module)
            else cast(list[nn.Parameter], list(shared))
            if shared is not None
            else None
        )

    def forward(self, x: Tensor, tasks: list[str] | None = None) -> dict[str, Tensor]:
        out = self.module(x)
        if tasks is None or not isinstance(out, Mapping):
            return out
        return {k: v for k, v in out.items() if k in tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        if self._shared is None:
            raise ConfigError("this weighting method needs the shared parameters: pass fit(..., shared=...)")
        return self._shared


def fit(
    model: nn.Module,
    tasks: Sequence[Task],
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader,
    *,
    weighting: str | Weighting = "equal",
    weighting_options: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | Callable[[list[dict]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    scheduler: Any = None,
    epochs: int = 1,
    batch_size: int = 8,
    run_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    shared: nn.Module | Sequence[Tensor] | None = None,
    mode: str = "parameters",
    grad_path: str = "loop",
    grad_clip: float | None = None,
    max_steps_per_epoch: int | None = None,
    progress: bool | None = None,
    loggers: Sequence[str | Logger] = ("tensorboard",),
    hooks: Sequence[Hook] = (),
    name: str = "fit",
    tensorboard: bool | None = None,
) -> Path:
    """Train ``model`` on ``tasks`` and return the run folder.

    ``model``: a :class:`MultiTaskModel` or any module returning ``{task name: raw output}`` (then
    pass ``shared=`` for gradient-level methods). ``train_data``/``val_data``: map-style datasets
    of sample dicts (batched with the seeded per-epoch shuffle of ``mtlkit train``) or your own
    DataLoaders. ``weighting``: a registered name (``mtlkit list``) or an instance. ``optimizer``:
    an instance, a callable taking parameter groups, or None for Adam(lr). ``progress``: progress
    bars and one line per epoch; None: where stderr is a terminal. ``loggers``: names of
    ``train.loggers`` (``tensorboard``: events in ``tb/``; ``mlflow``, ``wandb``), each on its own thread,
    and :class:`~mtlkit.train.logging.Logger` objects, called in order; ``[]``: none.
    ``tensorboard``: deprecated, ``False`` is ``loggers`` without ``"tensorboard"``.
    ``hooks``: :class:`~mtlkit.train.hooks.Hook` objects the loop calls before/after the run, each
    epoch and each step (and whose ``results()`` go into results.json).
    """
    names, own_loggers = split_loggers(loggers, tensorboard)
    tasks = list(tasks)
    if not isinstance(model, MultiTaskModel):
        model = ModuleModel(model, tasks, shared)
    dev = select_device(device)
    model = model.to(dev)
    if isinstance(weighting, str):
        method = WEIGHTINGS.get(weighting)([t.name for t in tasks], **(weighting_options or {}))
        method_name = weighting
    else:
        method, method_name = weighting, _registered_name(WEIGHTINGS, type(weighting))
    method = method.to(dev)
    checked_grad_path(grad_path, method)
    extra = [p for p in method.parameters() if p.requires_grad]
    if optimizer is None or callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
        groups = model.param_groups(lr) + ([{"params": extra, "lr": lr}] if extra else [])
        optimizer = torch.optim.Adam(groups, lr=lr) if optimizer is None else optimizer(groups)
    elif extra:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) not in held for p in extra):
            optimizer.add_param_group({"params": extra})
    train_loader = train_data if isinstance(train_data, DataLoader) else make_loader(train_data, batch_size, True, seed)
    val_loader = val_data if isinstance(val_data, DataLoader) else make_loader(val_data, batch_size, False, seed)
    problem = folder_name_problem(name)
    if problem is not None:
        raise ConfigError(f"fit(name=...): {shorten(name)} {problem}")
    arch = _registered_name(ARCHITECTURES, type(model.module) if isinstance(model, ModuleModel) else type(model))
    source = train_data.dataset if isinstance(train_data, DataLoader) else train_data
    partial = bool(getattr(source, "partial_labels", False))
    # a batch carrying "<task>/labelled" flags (partially labelled data) may leave tasks out of a step too
    flagged = check_first_batch(model, tasks, train_loader, dev, partial=partial)
    run_path = Path(run_dir) if run_dir is not None else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = {"arch": arch, "weighting": method_name, "tasks": [t.name for t in tasks]}
    last = run_path / "checkpoints" / "last.pt"
    ckpt = _previous_fit(last, meta) if last.is_file() else None
    progress = sys.stderr.isatty() if progress is None else progress
    loop = Loop(
        model=model,
        tasks=tasks,
        weighting=method,
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        device=dev,
        epochs=epochs,
        scheduler=scheduler,
        mode=mode,
        grad_path=grad_path,
        grad_clip=grad_clip,
        max_steps_per_epoch=max_steps_per_epoch,
        speed=Speed(None, False, False),
        progress=progress,
        meta=meta,
        partial_batches=partial or flagged,
        # pooled meters have no batch size; results.json records the training batch's
        evaluation=Evaluation(batch_size=train_loader.batch_size),
        hooks=list(hooks),
    )
    with run_locks():
        claim_fit_dir(run_path)
        config = describe(
            name=name,
            run_path=run_path,
            seed=seed,
            arch=arch,
            model=model,
            data=(train_loader, val_loader),
            weighting=method_name,
            weighting_options=weighting_options,
            mode=mode,
            grad_path=grad_path,
            optimizer=optimizer,
            scheduler=scheduler,
            epochs=epochs,
            device=dev,
            grad_clip=grad_clip,
            max_steps_per_epoch=max_steps_per_epoch,
            progress=progress,
            loggers=names,
        )
        seed_everything(seed)
        state = None
        if ckpt is not None:  # continue an interrupted fit in the same folder (before config.yaml is rewritten)
            state = _restore(last, ckpt, model, method, optimizer, scheduler)
        config_hash = write_config(run_path, config)
        info = RunInfo(
            name=name,
            arch=arch,
            weighting=method_name,
            dataset=config["dataset"]["name"],
            config_hash=config_hash,
            params_ratio=_params_ratio(model),
            capabilities=model.capabilities(),
        )
        with run_logging() as logs:
            logs.add(JsonlLogger(run_path, state.history if state is not None else []), *open_loggers(names, run_path))
            if progress:
                logs.add(ConsoleLogger(tasks))
            logs.add(*own_loggers)
            logs.log_params(config)
            return run(loop, run_path, info, [logs], state)


def check_first_batch(
    model: MultiTaskModel, tasks: Sequence[Task], loader: DataLoader, device: torch.device, partial: bool = False
) -> bool:
    """The first training batch holds ``image`` and every task's target, and the model predicts each task;
    True when the batch carries ``"<task>/labelled"`` flags (partially labelled samples).

    ``partial``: the dataset declares partial labels (``dataset.partial_labels = True``: a batch
    may carry only some tasks), so only one task is required. Runs the model once in eval mode
    without gradients and restores every random state, so the run's numbers do not change.
    """
    saved = rng_state()
    try:
        batch = next(iter(loader), None)
    finally:
        set_rng_state(saved)
    if batch is None:
        raise ConfigError("fit(train_data=...): no training batch (an empty dataset?)")
    if not isinstance(batch, Mapping):
        raise ConfigError(
            f"fit(train_data=...): a batch is a {type(batch).__name__}, expected a dict of "
            "'image' and one target per task (a dataset of sample dicts)"
        )
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in batch]
    if "image" not in batch or (missing and not partial) or len(missing) == len(names):
        what = "'image'" if "image" not in batch else f"target for task(s) {', '.join(map(repr, missing))}"
        raise ConfigError(
            f"fit(train_data=...): the first batch has no {what} (its keys: "
            f"{shorten(sorted(map(str, batch)))}); a sample is {{'image': ..., <task name>: target}}"
            + (
                ""
                if "image" not in batch
                else "; a dataset whose batches carry only some tasks declares partial_labels = True"
            )
        )
    check_forward(model, tasks, batch, device)
    return any(str(k).endswith(LABELLED_SUFFIX) for k in batch)


def _previous_fit(last: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of the fit that ``last`` continues; one made by another model or method is refused."""
    ckpt = load_checkpoint(last)
    before = ckpt.get("meta")
    if isinstance(before, dict):
        diffs = [
            f"{k} {shorten(before[k])} (now {shorten(meta[k])})" for k in meta if k in before and before[k] != meta[k]
        ]
        if diffs:
            raise TrainingError(
                f"{last.parents[1]}: holds a fit of another run ({'; '.join(diffs)}); a run folder "
                "holds one run: pass fit(run_dir=...) a new folder"
            )
    return ckpt


def _restore(
    last: Path,
    ckpt: dict[str, Any],
    model: MultiTaskModel,
    method: Weighting,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> RunState:
    """The objects put back from ``last``; a state that does not fit them is one line, not a state-dict dump."""
    try:
        return RunState.restore(ckpt, model, method, optimizer, scheduler, None)
    except MtlkitError:
        raise
    except Exception as err:  # noqa: BLE001 - load_state_dict raises RuntimeError/KeyError/ValueError/...
        raise TrainingError(
            f"{last}: does not fit this model, method and optimizer ({type(err).__name__}: "
            f"{shorten(str(err).strip().splitlines()[-1], 160)}); a run folder holds one run: "
            "pass fit(run_dir=...) a new folder"
        ) from None


def claim_fit_dir(run_path: Path) -> None:
    """Lock ``run_path`` for this fit and lay it out; one that holds a finished run is refused.

    An unfinished run there (its ``checkpoints/last.pt``) is continued, as the docstring of
    :func:`fit` promises; a finished one is never trained again or overwritten.
    """
    lock_run_dir(run_path)
    done = read_results_safely(run_path)
    if done is not None and done.get("status") == "finished":
        raise ConfigError(
            f"{run_path}: holds a finished run (results.json); a finished run is never overwritten: "
            "give fit another run_dir"
        )
    clean_interrupted_writes(run_path)
    try:
        (run_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(run_path / "checkpoints", err) from None


def describe(
    *,
    name: str,
    run_path: Path,
    seed: int,
    arch: str,
    model: MultiTaskModel,
    data: tuple[DataLoader, DataLoader],
    weighting: str,
    weighting_options: dict[str, Any] | None,
    mode: str,
    grad_path: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epochs: int,
    device: torch.device,
    grad_clip: float | None,
    max_steps_per_epoch: int | None,
    progress: bool,
    loggers: list[str],
) -> dict[str, Any]:
    """config.yaml of a fit run: the sections of ``mtlkit train``'s config, filled from the objects.

    Registered classes appear under their registered names (a model from ``build_model`` with its
    width, backbone and options; a dataset by the builder that declares its class), the others by
    class name. No scheduler is written as ``gamma: 1.0`` (StepLR with no decay: the same schedule).
    """
    train_loader, val_loader = data
    spec: dict[str, Any] = model.build_spec or {}
    group = optimizer.param_groups[0]
    optim: dict[str, Any] = {"name": type(optimizer).__name__.lower(), "lr": group.get("lr")}
    for key in ("weight_decay", "momentum"):
        if key in group:
            optim[key] = group[key]
    if scheduler is None:
        optim.update(step_size=max(epochs, 1), gamma=1.0)
    elif isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        optim.update(step_size=scheduler.step_size, gamma=scheduler.gamma)
    else:
        optim["scheduler"] = type(scheduler).__name__
    dataset: dict[str, Any] = {"name": dataset_name(train_loader.dataset), "tasks": [t.name for t in model.tasks]}
    root, size = getattr(train_loader.dataset, "root", None), getattr(train_loader.dataset, "size", None)
    if root is not None:
        dataset["root"] = str(root)
    if isinstance(size, tuple) and len(size) == 2:
        dataset["height"], dataset["width"] = int(size[0]), int(size[1])
    for key, loader in (("n_train", train_loader), ("n_val", val_loader)):
        try:
            dataset[key] = len(cast(Sized, loader.dataset))
        except TypeError:
            pass
    described: dict[str, Any] = (
        {
            "arch": spec["arch"],
            "backbone": spec["backbone"],
            "pretrained": spec["pretrained"],
            "width": spec["width"],
            "options": dict(spec["options"]),
        }
        if spec
        else {"arch": arch}
    )
    if spec.get("align_corners"):  # only when set: the key is hash-neutral at its default
        described["align_corners"] = True
    return {
        "name": name,
        "out_dir": str(run_path.parent),
        "seed": seed,
        "dataset": dataset,
        "model": described,
        "weighting": {
            "name": weighting,
            "mode": mode,
            "grad_path": grad_path,
            "options": dict(weighting_options or {}),
        },
        "optim": optim,
        "train": {
            "epochs": epochs,
            "batch_size": train_loader.batch_size,
            "eval_batch_size": val_loader.batch_size,
            "num_workers": train_loader.num_workers,
            "device": str(device),
            "amp": "off",
            "compile": False,
            "channels_last": False,
            "max_steps_per_epoch": max_steps_per_epoch,
            "grad_clip": grad_clip,
            "progress": progress,
            "loggers": list(loggers),
        },
        "eval": {"protocol": "pooled", "select_best": True, "report_last": 1},
    }


def write_config(run_path: Path, config: dict[str, Any]) -> str | None:
    """Write ``config.yaml``: validated and hashed as ``mtlkit train``'s when it describes the whole run as a
    config would, else as it is (no hash): a model not from ``build_model`` (its width, backbone and
    options unknown, so no default may stand in for them), an optimizer or scheduler the schema has no
    name for."""
    cfg = None
    if set(config["model"]) != {"arch"}:  # the model's build arguments are known
        try:
            cfg = config_from_dict(config, "fit")
        except ConfigError:  # an optimizer or scheduler the schema has no name for
            cfg = None
    if cfg is None:
        atomic_write_text(run_path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        return None
    save_config(cfg, run_path / "config.yaml")
    return cfg.hash()


def dataset_name(dataset: Any) -> str:
    """The registered name of the builder that declares ``dataset``'s class (``FolderDataset`` -> ``folder``),
    else the class name."""
    names = [n for n, builder in DATASETS.items() if getattr(builder, "dataset_class", None) is type(dataset)]
    return names[0] if len(names) == 1 else type(dataset).__name__


def _params_ratio(model: MultiTaskModel) -> float | None:
    """#P of a model ``build_model`` made (its recorded arch, width, backbone, options); None otherwise."""
    from mtlkit.models.params import single_task_parameters

    spec: dict[str, Any] | None = model.build_spec
    if spec is None:
        return None
    base = single_task_parameters(
        str(spec["arch"]), model.tasks, float(spec["width"]), backbone=spec["backbone"], **dict(spec["options"])
    )
    return count_parameters(model) / base if base else None


def _registered_name(registry: Registry, cls: type) -> str:
    """The name ``cls`` is registered under in ``registry``, else its class name."""
    for name, entry in registry.items():
        if entry is cls:
            return name
    return cls.__name__
