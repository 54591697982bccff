"""The run folder's records as types: one line of ``metrics.jsonl`` and ``results.json``.

The trainer writes them, the report reads them and the test fixtures make them through these
classes, so the three cannot drift apart. ``to_dict`` gives the JSON object (keys as documented in
docs/ARCHITECTURE.md); ``from_dict`` reads one back, keeping keys it does not know in ``extra``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from mtlkit.errors import shorten

R = TypeVar("R", bound="Record")

#: config keys that do not change a run's results (where files go, hardware, display): a sweep's run
#: with only these edited is not stale, and a resumed run may have them edited in its config.yaml
HASH_IGNORED = (
    "out_dir",
    "dataset.root",
    "train.progress",
    "train.tensorboard",
    "train.num_workers",
    "train.device",
    "train.eval_batch_size",
    "train.compile",
    "train.channels_last",
    "train.loggers",
    "train.tracker_options",
)


class Record:
    """JSON round-trip shared by the records: declared fields as keys, plus whatever ``extra`` holds."""

    extra: dict[str, Any]

    if TYPE_CHECKING:  # what @dataclass gives each record, so that the methods below type-check
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

        def __init__(self, **values: Any) -> None: ...

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record in ``data``; a declared field of the wrong JSON type is a TypeError naming it."""
        cls.check_types(data)
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def check_types(cls, data: Mapping[str, Any]) -> None:
        """Raise a TypeError naming the first declared field in ``data`` whose value has the wrong type.

        Fields that are absent are not checked (a failed run's results hold only some); numbers
        inside ``dict[str, float]`` fields may be null (JSON's stand-in for NaN/inf).
        """
        hints = get_type_hints(cls)
        for key, value in data.items():
            if key != "extra" and key in hints and not _matches(value, hints[key]):
                raise TypeError(f"field {key!r}: expected {_describe(hints[key])}, got {shorten(value, 80)}")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a field annotation (str, int, float, dict/list of them, X | None, Any)."""
    origin = get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is dict:
        key_type, value_type = get_args(annotation)
        return isinstance(value, dict) and all(
            _matches(k, key_type) and _matches(v, value_type) for k, v in value.items()
        )
    if origin is list:
        (item_type,) = get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item_type) for v in value)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    """An annotation as a reader of the JSON file would say it."""
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


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
