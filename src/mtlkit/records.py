"""The run folder's records as types: one line of ``metrics.jsonl`` and ``results.json``.

The trainer writes them, the report reads them and the test fixtures make them through these
classes, so the three cannot drift apart. ``to_dict`` gives the JSON object (keys as documented in
docs/ARCHITECTURE.md); ``from_dict`` reads one back, keeping keys it does not know in ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")

#: config keys that do not change a run's results (where files go, hardware, display): a sweep's run
#: with only these edited is not stale, and a resumed run may have them edited in its config.yaml
HASH_IGNORED = ("out_dir", "dataset.root", "train.progress", "train.tensorboard", "train.num_workers",
                "train.device", "train.eval_batch_size", "train.compile", "train.channels_last", "train.loggers",
                "train.tracker_options")


class Record:
    """JSON round-trip shared by the records: declared fields as keys, plus whatever ``extra`` holds."""

    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        extra = out.pop("extra")
        return {**out, **extra}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


@dataclass
class EpochRecord(Record):
    """One epoch: training loss means, validation losses and metrics, mean task weights."""

    epoch: int  # 1-based
    time: float = 0.0  # seconds since the run started (over resumes)
    epoch_time: float = 0.0
    lr: float = 0.0
    train: dict[str, float] = field(default_factory=dict)  # "loss/<task>"
    val: dict[str, float] = field(default_factory=dict)  # "loss/<task>", "<task>/<metric>"
    weights: dict[str, float] = field(default_factory=dict)  # "<task>"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResults(Record):
    """A finished (or failed) run: what it was, how large, its final and best validation metrics."""

    name: str
    arch: str
    weighting: str
    dataset: str
    tasks: list[dict[str, Any]]  # Task.to_dict() of each task
    params: int
    params_ratio: float | None
    final: dict[str, float]
    best: dict[str, float] | None  # None without model selection (eval.select_best off)
    best_epoch: int | None
    epochs: int
    wall_time: float
    config_hash: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    machine: Any = None
    status: str = "finished"
    extra: dict[str, Any] = field(default_factory=dict)

