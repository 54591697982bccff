"""``mtlkit.fit``: train objects you made (model, tasks, datasets, weighting) with mtlkit's loop.

The same loop as ``mtlkit train`` (:func:`mtlkit.train.loop.run`): checkpoints every epoch (a
second call with the same ``run_dir`` continues an interrupted run), ``metrics.jsonl``,
``results.json``, per-task metrics from each task's kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mtlkit.config import folder_name_problem
from mtlkit.data.sampling import make_loader
from mtlkit.errors import ConfigError, MtlkitError, TrainingError, shorten
from mtlkit.models.base import MultiTaskModel
from mtlkit.tasks import Task
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.guards import check_forward
from mtlkit.train.logging import ConsoleLogger, JsonlLogger, Logger, TensorBoardLogger
from mtlkit.train.loop import Loop, RunInfo, run
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

    def __init__(self, module: nn.Module, tasks: Sequence[Task], shared: nn.Module | Sequence[Tensor] | None = None
                 ) -> None:
        super().__init__(list(tasks))
        self.module = module
        self._shared = (list(shared.parameters()) if isinstance(shared, nn.Module)
                        else list(shared) if shared is not None else None)

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
    progress: bool = False,
    tensorboard: bool = False,
    loggers: Sequence[Logger] = (),
    name: str = "fit",
) -> Path:
    """Train ``model`` on ``tasks`` and return the run folder.

    ``model``: a :class:`MultiTaskModel` or any module returning ``{task name: raw output}`` (then
    pass ``shared=`` for gradient-level methods). ``train_data``/``val_data``: map-style datasets
    of sample dicts (batched with the seeded per-epoch shuffle of ``mtlkit train``) or your own
    DataLoaders. ``weighting``: a registered name (``mtlkit list``) or an instance. ``optimizer``:
    an instance, a callable taking parameter groups, or None for Adam(lr).
    """
    tasks = list(tasks)
    if not isinstance(model, MultiTaskModel):
        model = ModuleModel(model, tasks, shared)
    dev = select_device(device)
    model = model.to(dev)
    if isinstance(weighting, str):
        from mtlkit.registry import WEIGHTINGS

        method = WEIGHTINGS.get(weighting)([t.name for t in tasks], **(weighting_options or {}))
        method_name = weighting
    else:
        method, method_name = weighting, type(weighting).__name__
    method = method.to(dev)
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
    arch = type(model.module).__name__ if isinstance(model, ModuleModel) else _arch(model)
    source = train_data.dataset if isinstance(train_data, DataLoader) else train_data
    partial = bool(getattr(source, "partial_labels", False))
    check_first_batch(model, tasks, train_loader, dev, partial=partial)
    run_path = Path(run_dir) if run_dir is not None else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = {"arch": arch, "weighting": method_name, "tasks": [t.name for t in tasks]}
    last = run_path / "checkpoints" / "last.pt"
    ckpt = _previous_fit(last, meta) if last.is_file() else None
    (run_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    loop = Loop(model=model, tasks=tasks, weighting=method, optimizer=optimizer, train_loader=train_loader,
                val_loader=val_loader, device=dev, epochs=epochs, scheduler=scheduler, mode=mode,
                grad_clip=grad_clip, max_steps=max_steps_per_epoch, speed=Speed(None, False, False),
                progress=progress, grad_path=grad_path, meta=meta, partial_batches=partial)
    seed_everything(seed)
    state = None
    if ckpt is not None:  # continue an interrupted fit in the same folder
        try:
            state = RunState.restore(ckpt, model, method, optimizer, scheduler, None)
        except MtlkitError:
            raise
        except Exception as err:  # noqa: BLE001 - load_state_dict raises RuntimeError/KeyError/ValueError/...
            raise TrainingError(f"{last}: does not fit this model, method and optimizer ({type(err).__name__}: "
                                f"{shorten(str(err).strip().splitlines()[-1], 160)}); a run folder holds one run: "
                                "pass fit(run_dir=...) a new folder") from None
    logs: list[Logger] = [JsonlLogger(run_path, state.history if state is not None else [])]
    if tensorboard:
        logs.append(TensorBoardLogger(run_path))
    if progress:
        logs.append(ConsoleLogger(tasks))
    logs += list(loggers)
    info = RunInfo(name=name, arch=arch, weighting=method_name, dataset=type(train_data).__name__,
                   capabilities=model.capabilities())
    return run(loop, run_path, info, logs, state)


def check_first_batch(model: MultiTaskModel, tasks: Sequence[Task], loader: DataLoader, device: torch.device,
                      partial: bool = False) -> None:
    """The first training batch holds ``image`` and every task's target, and the model predicts each task.

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
        raise ConfigError(f"fit(train_data=...): a batch is a {type(batch).__name__}, expected a dict of "
                          "'image' and one target per task (a dataset of sample dicts)")
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in batch]
    if "image" not in batch or (missing and not partial) or len(missing) == len(names):
        what = "'image'" if "image" not in batch else f"target for task(s) {', '.join(map(repr, missing))}"
        raise ConfigError(f"fit(train_data=...): the first batch has no {what} (its keys: "
                          f"{shorten(sorted(map(str, batch)))}); a sample is {{'image': ..., <task name>: target}}"
                          + ("" if "image" not in batch else "; a dataset whose batches carry only some tasks "
                             "declares partial_labels = True"))
    check_forward(model, tasks, batch, device)


def _previous_fit(last: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of the fit that ``last`` continues; one made by another model or method is refused."""
    ckpt = load_checkpoint(last)
    before = ckpt.get("meta")
    if isinstance(before, dict):
        diffs = [f"{k} {shorten(before[k])} (now {shorten(meta[k])})"
                 for k in meta if k in before and before[k] != meta[k]]
        if diffs:
            raise TrainingError(f"{last.parents[1]}: holds a fit of another run ({'; '.join(diffs)}); a run folder "
                                "holds one run: pass fit(run_dir=...) a new folder")
    return ckpt


def _arch(model: MultiTaskModel) -> str:
    """The registered name of the model's class, else its class name."""
    from mtlkit.registry import ARCHITECTURES

    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    return type(model).__name__
