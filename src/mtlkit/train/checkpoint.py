"""Checkpoints: written atomically every epoch, read back with ``weights_only=True`` and checked.

Every checkpoint stores what it is for (``meta``: architecture, width, weighting, tasks, dataset,
config hash, mtlkit version). Before loading, that is compared with the run's config, so a
checkpoint that does not fit (config.yaml edited to another architecture, a file from another
run, ``torch.save({})``, a tensor, random bytes) is one line naming the file and what to do,
never a ``load_state_dict`` traceback.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

import mtlkit
from mtlkit.config import Config
from mtlkit.errors import ConfigError, MtlkitError, TrainingError
from mtlkit.io import atomic_torch_save, damaged_zip_member
from mtlkit.records import HASH_IGNORED
from mtlkit.tasks import Task
from mtlkit.train import distributed as dist
from mtlkit.train.runtime import set_rng_state

#: meta keys a checkpoint must agree on with the config, and how the config names them
MODEL_KEYS = {"arch": "model.arch", "width": "model.width", "tasks": "tasks", "dataset": "dataset.name"}
TRAINING_KEYS = {**MODEL_KEYS, "weighting": "weighting.name"}
#: what resuming needs besides the model
RESUME_KEYS = ("weighting", "optimizer", "scheduler", "rng", "epoch", "best", "reference", "history", "wall_time")


def checkpoint_meta(cfg: Config, tasks: list[Task]) -> dict[str, Any]:
    """What a checkpoint of this run is for (stored under ``meta`` in every checkpoint)."""
    return {
        "arch": cfg.model.arch,
        "width": float(cfg.model.width),
        "weighting": cfg.weighting.name,
        "tasks": [t.name for t in tasks],
        "dataset": cfg.dataset.name,
        "config_hash": cfg.hash(),
        "mtlkit": mtlkit.__version__,
        "config": cfg.to_dict(),
    }


#: the config keys a resume may change: the run then trains to the new epoch count (recorded)
RESUME_MAY_CHANGE = ("train.epochs",)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config dict (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``)."""
    if not isinstance(data, dict) or not data and prefix:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _neutral(key: str) -> bool:
    """Whether a config key cannot change a run's results (:data:`mtlkit.records.HASH_IGNORED`)."""
    return any(key == k or key.startswith(k + ".") for k in HASH_IGNORED)


def resume_changes(run_dir: Path, meta: Any, cfg: Config, epochs_done: int) -> list[dict[str, Any]]:
    """The config changes a resume applies (``[{"key", "from", "to", "epoch"}]``); others are refused.

    ``meta["config"]`` is the config the checkpoint's epochs ran under. Keys that cannot change
    results (devices, logging, paths) may differ; ``train.epochs`` may change (not below the
    epochs done), taking effect at the next epoch; any other difference (``optim.lr``, ``seed``,
    ``dataset.n_train``...) would make the run folder describe something that did not run, so it
    is a one-line ConfigError naming the keys. Checkpoints without a stored config (before mtlkit
    stored it, ``fit`` runs) are not compared.
    """
    old = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(old, dict):
        return []
    before, after = _flatten(old), _flatten(cfg.to_dict())
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and not _neutral(k))
    refused = [k for k in keys if k not in RESUME_MAY_CHANGE]
    if refused:
        shown = "; ".join(f"{k} {_short(before.get(k))} -> {_short(after.get(k))}" for k in refused[:5])
        more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
        raise ConfigError(
            f"{run_dir / 'config.yaml'}: changed since the run trained ({shown}{more}); a resumed run "
            "keeps the settings it ran with: put the value(s) back to resume, or start a new run "
            f"with them (mtlkit train {run_dir / 'config.yaml'} KEY=VALUE --run-dir NEW)"
        )
    changes = []
    for key in keys:
        if key == "train.epochs" and int(after[key]) < epochs_done:
            raise ConfigError(
                f"{run_dir / 'config.yaml'}: train.epochs {after[key]} is fewer than the {epochs_done} "
                f"epochs the run has done; put it back to {before[key]} or more"
            )
        changes.append({"key": key, "from": before.get(key), "to": after.get(key), "epoch": epochs_done + 1})
    return changes


def _short(value: Any) -> str:
    """A config value as an error message quotes it (at most 60 characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resume_state(path: Path | None, expect: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0 reads ``path`` (a ``last.pt``, if it exists) and shares it; a bad one fails on every rank."""
    state: dict[str, Any] | MtlkitError | None = None
    if dist.is_main() and path is not None and path.is_file():
        try:
            state = load_checkpoint(path, expect=expect)
        except MtlkitError as err:
            state = err
    state = dist.broadcast_object(state)
    if isinstance(state, MtlkitError):
        raise state
    return state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temp file + rename (a kill never leaves half a file)."""
    atomic_torch_save(state, path)


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expect: dict[str, Any] | None = None,
    keys: tuple[str, ...] = ("model",),
) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain Python only); a bad file is one clear error.

    ``keys`` must be present; ``expect`` (from :func:`checkpoint_meta`, limited to the keys to
    compare) must match the checkpoint's ``meta`` when it has one (checkpoints written before
    mtlkit stored it are loaded unchecked; a misfit is then caught when the state is applied).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise TrainingError(
            f"{path}: not a PyTorch checkpoint (no torch.save archive: truncated, corrupt or "
            "another format); use the run's own checkpoints/last.pt or best.pt"
        )
    damaged = damaged_zip_member(path)
    if damaged is not None:
        raise TrainingError(
            f"{path}: corrupt checkpoint (checksum mismatch in {damaged}: the file changed after "
            "it was written); it is not loaded. Use another checkpoint of the run (best.pt / "
            "last.pt) or a backup, or train the run again"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling/IO failure is reported the same way
        if "weights only load failed" in str(err).lower():
            raise TrainingError(
                f"{path}: refused, the checkpoint holds objects other than tensors and plain "
                "Python data (loading it could run code); mtlkit checkpoints never do"
            ) from None
        raise TrainingError(f"{path}: cannot read checkpoint ({type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(state, dict):
        raise TrainingError(
            f"{path}: holds a {type(state).__name__}, not an mtlkit checkpoint (a dict with "
            "'model', ...); use the run's own checkpoints/last.pt or best.pt"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise TrainingError(
            f"{path}: not an mtlkit checkpoint (no {', '.join(repr(k) for k in missing)}); "
            "use the run's own checkpoints/last.pt or best.pt"
        )
    if expect is not None:
        check_meta(path, state.get("meta"), expect)
    return state


def check_meta(path: Path, meta: Any, expect: dict[str, Any]) -> None:
    """Raise a one-line TrainingError when the checkpoint's ``meta`` disagrees with ``expect``."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise TrainingError(f"{path}: malformed checkpoint metadata ({type(meta).__name__})")
    names = {**TRAINING_KEYS}
    diffs = []
    for key, want in expect.items():
        if key in names and key in meta and meta[key] != want:
            diffs.append(f"{names[key]} {_show(meta[key])}, config says {_show(want)}")
    if diffs:
        raise TrainingError(
            f"checkpoint {path} is for {'; '.join(diffs)}: put the run's config.yaml back as it "
            "was trained, or train a new run with the changed config"
        )


def restore_training_state(
    path: Path,
    state: dict[str, Any],
    model: torch.nn.Module,
    weighting: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any | None,
) -> None:
    """Put a ``last.pt`` state back into the run's objects; a misfit is one line naming the file."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise TrainingError(
            f"{path}: cannot resume from it, it lacks {', '.join(missing)} (a best.pt or a "
            "foreign file?); resume needs the run's checkpoints/last.pt"
        )
    _apply(path, "model", lambda: model.load_state_dict(state["model"]))
    _apply(path, "weighting method", lambda: weighting.load_state_dict(state["weighting"]))
    _apply(path, "optimizer", lambda: optimizer.load_state_dict(state["optimizer"]))
    _apply(path, "scheduler", lambda: scheduler.load_state_dict(state["scheduler"]))
    if scaler is not None and state.get("scaler"):
        _apply(path, "gradient scaler", lambda: scaler.load_state_dict(state["scaler"]))
    _apply(path, "random state", lambda: set_rng_state(state["rng"]))


def load_model_weights(path: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load ``state["model"]`` into ``model``; a misfit is one line naming the file."""
    _apply(path, "model", lambda: model.load_state_dict(state["model"]))


def _apply(path: Path, what: str, load) -> None:
    try:
        load()
    except MtlkitError:
        raise
    except Exception as err:  # noqa: BLE001 - load_state_dict raises RuntimeError/KeyError/ValueError/...
        raise TrainingError(
            f"{path}: does not fit this run's {what} ({type(err).__name__}: {_first_line(err)}); "
            "was config.yaml edited after training? put it back, or train a new run"
        ) from None


def _first_line(err: BaseException) -> str:
    """The error's first informative line (skipping headers like "Error(s) in loading state_dict for X:")."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    while len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _show(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
