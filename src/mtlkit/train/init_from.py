"""``model.init_from``: start each task's stream of a network from a one-task run's trained weights.

Misra et al. (*Cross-stitch Networks*, CVPR 2016, Sec. 4) find that a cross-stitch network trains
best when each of its task networks starts from a network trained on that task alone (their
ablation: ImageNet initialisation vs one-task initialisation). ``model.init_from: {segmentation:
RUN_A, normal: RUN_B}`` does that: for each named task, the task's backbone copy (``nets.<task>``)
and head (``heads.<task>``) are loaded from run folder ``RUN_A``'s ``checkpoints/best.pt`` (or
``last.pt`` when it saved no best), read through :func:`~mtlkit.train.checkpoint.load_checkpoint`.

The target is any architecture with one network per task (``single``, ``cross_stitch``: every
``BackboneModel`` whose parameters are ``nets.<task>.*`` and ``heads.<task>.*``; on SegNet the MTAN
paper layouts ``nets.<task>.trunk.*`` / ``nets.<task>.heads.<task>.*`` are understood too); the source
a run of one such architecture that has the task (a ``single`` run, usually). Checked, each a one-line
ConfigError naming the run: the run folder and a checkpoint exist, the run has the task, and it used
the same backbone and width. What is not in the source (the cross-stitch units, other tasks'
networks) keeps its initialisation. Tasks the mapping does not name keep theirs (ImageNet weights
with ``model.pretrained``, else random). A resumed run does not re-apply it: its checkpoint wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch

from mtlkit.config import Config, load_config
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.models.base import MultiTaskModel
from mtlkit.train.checkpoint import load_checkpoint

V = TypeVar("V")


def check_init_from(value: Any) -> dict[str, str] | None:
    """``value`` as a {task: run folder} dict (None stays None); a ConfigError for any other shape."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ConfigError("model.init_from must be a mapping {task: run folder} (e.g. {segmentation: runs/seg})")
    for task, run in value.items():
        if not isinstance(task, str) or not isinstance(run, str) or not run:
            raise ConfigError(f"model.init_from.{task}: expected a run folder path, got {run!r}")
    return dict(value)


def stream_state(state: dict[str, V], task: str) -> dict[str, V]:
    """Task ``task``'s stream in ``state``, keyed ``body.<key>`` (its backbone) and ``head.<key>`` (its head)."""
    out: dict[str, V] = {}
    rules = (
        (f"nets.{task}.heads.{task}.", "head."),  # the MTAN paper's one-task SegNet
        (f"nets.{task}.trunk.", "body."),
        (f"heads.{task}.", "head."),
        (f"nets.{task}.", "body."),
    )
    for key, value in state.items():
        for prefix, to in rules:
            if key.startswith(prefix):
                out[to + key[len(prefix) :]] = value
                break
    return out


def _resolved_backbone(cfg: Config) -> str | None:
    from mtlkit.models import model_class
    from mtlkit.models.over_backbone import BackboneModel

    cls = model_class(cfg.model.arch)
    if cfg.model.backbone is not None:
        return cfg.model.backbone
    return cls.default_backbone if issubclass(cls, BackboneModel) else cls.own_backbone


def apply_init_from(cfg: Config, model: MultiTaskModel) -> list[str]:
    """Load every stream ``cfg.model.init_from`` names into ``model``; returns the runs' checkpoint paths."""
    mapping = check_init_from(cfg.model.init_from)
    if not mapping:
        return []
    names = [t.name for t in model.tasks]
    own = model.state_dict()
    backbone, width = _resolved_backbone(cfg), float(cfg.model.width)
    loaded = []
    for task, run in mapping.items():
        key = f"model.init_from.{task}"
        if task not in names:
            raise ConfigError(f"{key}: this run has no task {task!r} (its tasks: {', '.join(names)})")
        run_dir = Path(run)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{key}: {run}: not a run folder (no config.yaml)")
        src_cfg = load_config(run_dir / "config.yaml")
        src_backbone, src_width = _resolved_backbone(src_cfg), float(src_cfg.model.width)
        if (src_backbone, src_width) != (backbone, width):
            raise ConfigError(
                f"{key}: {run}: trained backbone {src_backbone} at width {src_width:g}; "
                f"this run needs {backbone} at width {width:g}"
            )
        ckpt = run_dir / "checkpoints" / "best.pt"
        if not ckpt.is_file():
            ckpt = ckpt.with_name("last.pt")
        if not ckpt.is_file():
            raise ConfigError(f"{key}: {run}: no checkpoints/best.pt or last.pt (has it trained?)")
        try:
            src = load_checkpoint(ckpt, map_location="cpu")["model"]
        except MtlkitError as err:
            raise ConfigError(f"{key}: {run}: {err}") from None
        source = stream_state(src, task)
        if not source:
            raise ConfigError(f"{key}: {run}: the run has no network for task {task!r}")
        target = stream_state({k: k for k in own}, task)  # stream key -> this model's key
        if not target:
            raise ConfigError(f"{key}: model.arch {cfg.model.arch!r} has no network of its own per task to load into")
        missing = sorted(set(target) - set(source))
        extra = sorted(set(source) - set(target))
        if missing or extra:
            what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            raise ConfigError(f"{key}: {run}: its {task} network does not fit this model's ({what})")
        for k, own_key in target.items():
            if tuple(source[k].shape) != tuple(own[own_key].shape):
                need = tuple(own[own_key].shape)
                raise ConfigError(f"{key}: {run}: {k} has shape {tuple(source[k].shape)}, this model needs {need}")
        with torch.no_grad():
            for k, own_key in target.items():
                own[own_key].copy_(source[k])
        loaded.append(str(ckpt))
    return loaded
