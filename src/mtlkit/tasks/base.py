"""A task and its kind: what a task predicts (:class:`Task`) and how a kind of task behaves (:class:`TaskKind`).

A :class:`Task` is plain data (name, kind, channels, metrics, main metric, options): it goes into
``results.json`` and back. Everything that differs between kinds of tasks lives in one
registered :class:`TaskKind` subclass per file of this package: target checks, how a target is
resized, zoomed and flipped by augmentation, the loss, the postprocess, the streaming meter and
its metrics' better direction, how a target or prediction is drawn in report figures and the
label of the task in report tables. ``Task`` forwards to its kind, so callers never switch on a
kind string. Adding a kind is one file with a ``@TASK_KINDS.register("name")`` class plus one
import line in ``mtlkit/tasks/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlkit.config import MAX_CLASSES as MAX_CHANNELS
from mtlkit.errors import ConfigError, DataError, shorten
from mtlkit.registry import TASK_KINDS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

    from mtlkit.metrics.base import Meter

#: names a task cannot take: sample keys that are not targets
RESERVED_NAMES = ("image",)

#: suffix of a sample's per-task "has a label" flag (partially labelled data)
LABELLED_SUFFIX = "/labelled"


def labelled_key(task: str) -> str:
    """The sample key of task ``task``'s labelled flag: ``"<task>/labelled"``, a bool scalar per sample
    (a (B,) bool tensor once collated). Present only for tasks some samples lack; a sample whose flag is
    False carries its kind's :meth:`TaskKind.unlabelled` target, which losses and meters never read."""
    return task + LABELLED_SUFFIX


@dataclass(frozen=True)
class Task:
    """One prediction task.

    name: key of the target in a sample and of the prediction in a model's output dict.
    kind: a registered task kind (``TASK_KINDS``): selects loss, metrics, augmentation, drawing.
    channels: output channels of the task's head (number of classes for segmentation).
    metrics: metric name -> True when higher is better.
    main_metric: the metric curves and the task-complexity plot show first.
    options: kind options (e.g. ``ignore_index``, ``invalid_value``, ``class_names``, ``pos_weight``).
    """

    name: str
    kind: str
    channels: int
    metrics: dict[str, bool] = field(hash=False)
    main_metric: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def spec(self) -> TaskKind:
        """The kind object that implements this task's behaviour."""
        return kind_of(self.kind)

    @property
    def dense(self) -> bool:
        """True for per-pixel tasks (a (C, H, W) head output), False for image-level ones."""
        return self.spec.dense

    def option(self, key: str) -> Any:
        """The value of option ``key``: the task's own, else the kind's default."""
        if key in self.options:
            return self.options[key]
        return self.spec.defaults[key]

    def with_options(self, **options: Any) -> Task:
        """A copy of the task with ``options`` added or replaced (checked by the kind)."""
        merged = {**self.options, **options}
        self.spec.check_options(self.name, merged, self.channels)
        return replace(self, options=merged)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The task's training loss (a scalar tensor) for a batch of raw head outputs."""
        return self.spec.loss(self, pred, target)

    def postprocess(self, pred: Tensor) -> Tensor:
        """Map a head's raw output to the prediction the meter scores (e.g. normalised normals)."""
        return self.spec.postprocess(self, pred)

    def new_meter(self) -> Meter:
        """A fresh streaming accumulator of this task's metrics over an evaluation set."""
        return self.spec.new_meter(self)

    def unlabelled(self, hw: tuple[int, int]) -> Tensor:
        """The target a sample without this task's label carries (:meth:`TaskKind.unlabelled`)."""
        return self.spec.unlabelled(self, hw)

    def check_target(self, target: np.ndarray) -> str | None:
        """A problem with one sample's target (dtype, shape, values), or None when it is valid."""
        return self.spec.check_target(self, target)

    def table_label(self) -> str:
        """How report tables name the task (e.g. ``seg (13 classes)``)."""
        return self.spec.table_label(self)

    def column_label(self) -> str:
        """The heading of the task's column group in report tables: its kind's ``column_label``, else its name."""
        return self.spec.column_label or self.name

    @property
    def reported_metrics(self) -> dict[str, bool]:
        """Metric -> higher is better of the kind's ``reported_metrics`` that are not among the task's
        ``metrics``: logged, shown in report tables, never in best-epoch selection or Δm."""
        return {m: h for m, h in self.spec.reported_metrics.items() if m not in self.metrics}

    def metric_label(self, metric: str) -> str:
        """A metric's short column header in report tables (e.g. ``mIoU``)."""
        return self.spec.metric_labels.get(metric, metric)

    def to_dict(self) -> dict[str, Any]:
        """The task as plain data (``results.json``); :meth:`from_dict` reads it back."""
        out = {
            "name": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "metrics": dict(self.metrics),
            "main_metric": self.main_metric,
        }
        if self.options:
            out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """A task from :meth:`to_dict`'s output (options default to none)."""
        return cls(
            str(data["name"]),
            str(data["kind"]),
            int(data["channels"]),
            {str(k): bool(v) for k, v in dict(data["metrics"]).items()},
            str(data["main_metric"]),
            dict(data.get("options") or {}),
        )


class TaskKind:
    """What a kind of task does; one subclass per kind, registered in ``TASK_KINDS``.

    Every method takes the :class:`Task` (for its channels and options). Dense kinds get defaults
    for augmentation (nearest-neighbour resize of the last two dims, horizontal flip, no change
    under zoom); the rest is the kind's to say.
    """

    #: registered name (set by the subclass)
    name: ClassVar[str] = ""
    #: per-pixel target and output (else one per image)
    dense: ClassVar[bool] = True
    #: metric -> higher is better, and the main metric
    metrics: ClassVar[dict[str, bool]] = {}
    main_metric: ClassVar[str] = ""
    #: metrics the kind's meter also computes and runs log (metrics.jsonl, results.json), with their better
    #: direction, left out of ``metrics``: best-epoch selection and Δm do not use them; report tables show
    #: them as columns marked "shown, not in Δm" when a run of the table logged them
    reported_metrics: ClassVar[dict[str, bool]] = {}
    #: head channels when the kind fixes them (None: the task says, e.g. number of classes)
    fixed_channels: ClassVar[int | None] = None
    #: accepted options and their defaults
    defaults: ClassVar[dict[str, Any]] = {}
    #: metric -> short column header in report tables
    metric_labels: ClassVar[dict[str, str]] = {}
    #: heading of the task's column group in report tables (the MTAN paper's "Segmentation", ...); None: the
    #: task's name
    column_label: ClassVar[str | None] = None
    #: sub-folder of the kind's targets in the ``.npy`` layout (:mod:`mtlkit.data.npy`); None: not stored there
    npy_dir: ClassVar[str | None] = None
    #: the kind's ``.npy`` targets are class ids: the folder a dataset may rename (``label_dir``) and whose
    #: stored ids it may map to the task's classes (``label_map``)
    npy_labels: ClassVar[bool] = False

    # ------------------------------------------------------------------ declaring a task

    def make(self, name: str, channels: int | None = None, **options: Any) -> Task:
        """A task of this kind with the kind's metrics; options are checked."""
        if channels is None:
            channels = self.fixed_channels
        if not isinstance(name, str) or not name:
            raise ConfigError(f"task name must be a non-empty string (got {shorten(name)})")
        if name in RESERVED_NAMES:
            raise ConfigError(f"task name {name!r} is reserved: a sample's {name!r} is the input image")
        if channels is None:
            raise ConfigError(f"task {name!r} of kind {self.name!r}: needs channels (e.g. the number of classes)")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"task {name!r}: channels must be a positive integer (got {shorten(channels)})")
        if channels > MAX_CHANNELS:
            raise ConfigError(
                f"task {name!r}: channels {channels} is more than {MAX_CHANNELS:,} "
                "(a head that size does not fit in memory)"
            )
        if self.fixed_channels is not None and channels != self.fixed_channels:
            raise ConfigError(
                f"task {name!r} of kind {self.name!r} has {self.fixed_channels} channel(s), got {channels}"
            )
        self.check_options(name, options, channels)
        return Task(name, self.name, channels, dict(self.metrics), self.main_metric, dict(options))

    def check_options(self, name: str, options: Mapping[str, Any], channels: int) -> None:
        """Raise a ConfigError naming an option this kind does not accept."""
        unknown = [k for k in options if k not in self.defaults]
        if unknown:
            takes = ", ".join(self.defaults) or "no options"
            raise ConfigError(f"task {name!r}: unknown option {unknown[0]!r} for kind {self.name!r} (it takes {takes})")

    # ------------------------------------------------------------------ training and scoring

    def loss(self, task: Task, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def postprocess(self, task: Task, pred: Tensor) -> Tensor:
        """Raw head output -> what the meter scores (identity unless the kind says otherwise)."""
        return pred

    def new_meter(self, task: Task) -> Meter:
        raise NotImplementedError

    # ------------------------------------------------------------------ data

    def check_target(self, task: Task, target: np.ndarray) -> str | None:
        """A problem with one sample's target as stored (before collation), or None."""
        return None

    def missing(self, task: Task, target: Tensor) -> Tensor:
        """Boolean mask of one sample's target pixels that carry no value (ignored labels, missing depth...):
        what ``mtlkit data check`` reports as ignore/missing. Default: none ((H, W) for dense kinds, else a scalar)."""
        return torch.zeros(target.shape[-2:] if self.dense else (), dtype=torch.bool)

    def class_counts(self, task: Task, target: Tensor) -> np.ndarray | None:
        """Labelled pixels (or images) of each class in one sample's target, ``channels`` int64 counts: the
        report's data-starved figure sums them over the training split. None (default): the kind has no classes."""
        return None

    def unlabelled(self, task: Task, hw: tuple[int, int]) -> Tensor:
        """The target of a sample without a label for ``task`` (image size ``hw``), in the sample layout:
        every pixel missing (``missing`` is all true) where the kind has a missing value, so code that
        ignores the ``labelled`` flag still skips it. Default: ``channels`` x H x W zeros for dense
        kinds (0 = missing for depth and normals), -1 for image-level ones (``classification``)."""
        if not self.dense:
            return torch.tensor(-1, dtype=torch.int64)
        return torch.zeros((task.channels, *hw), dtype=torch.float32)

    def resize(self, task: Task, target: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Nearest-neighbour resampling of a dense target at source ``rows`` x ``cols`` (exact values kept)."""
        if not self.dense:
            return target
        return target.index_select(-2, rows).index_select(-1, cols).contiguous()

    def zoom(self, task: Task, target: Tensor, scale: float) -> Tensor:
        """A target after zooming into the scene by ``scale`` (most targets do not change)."""
        return target

    def flip(self, task: Task, target: Tensor) -> Tensor:
        """The target of the horizontally mirrored image."""
        if not self.dense:
            return target
        return torch.flip(target, dims=[-1]).contiguous()

    def from_file(self, task: Task, array: np.ndarray) -> Tensor:
        """A target tensor from an array read from a file (``.png`` or ``.npy``), in the sample layout."""
        raise NotImplementedError

    def read_npy(
        self,
        task: Task,
        path: Path,
        hw: tuple[int, int] | None,
        *,
        label_map: np.ndarray | None = None,
        normal_tol: float | None = None,
    ) -> Tensor:
        """One checked target file of the ``.npy`` layout (:mod:`mtlkit.data.npy`), in the sample layout.

        ``hw``: the sample image's (H, W) the target must match (None: not checked); ``label_map`` maps stored
        class ids to the task's classes (kinds with ``npy_labels``); ``normal_tol``: how far a stored unit
        vector's length may be from 1. A malformed file is a DataError naming it. Kinds without ``npy_dir``
        are not stored in the layout.
        """
        raise DataError(f"task {task.name!r} of kind {self.name!r} has no .npy folder")

    # ------------------------------------------------------------------ reports

    def display(self, task: Task, pred: Tensor) -> Tensor:
        """One postprocessed prediction (no batch dim) as the array ``draw`` shows (e.g. argmax labels)."""
        return pred

    def draw(self, task: Task, ax: Axes, array: np.ndarray | None) -> None:
        """Draw a target or displayed prediction on a matplotlib axes."""
        ax.set_xticks([])
        ax.set_yticks([])
        if array is None:
            ax.set_axis_off()
            return
        self._draw(task, ax, np.asarray(array))

    def _draw(self, task: Task, ax: Axes, array: np.ndarray) -> None:
        ax.text(0.5, 0.5, str(array), ha="center", va="center", transform=ax.transAxes)

    def table_label(self, task: Task) -> str:
        """The task's name in report table titles."""
        return task.name

    # ------------------------------------------------------------------ evaluation protocols

    def protocol_meter(self, task: Task, protocol: str, batch_size: int) -> Meter:
        """The meter scoring ``task`` under an evaluation protocol other than ``pooled``
        (:mod:`mtlkit.metrics.protocols`: ``mtan_official``, ``mtan_paper``, with the authors' ``batch_size``).
        Default: the pooled meter (:meth:`new_meter`), as the MTAN code has no other for this kind."""
        return self.new_meter(task)


_INSTANCES: dict[str, TaskKind] = {}


def kind_of(name: str) -> TaskKind:
    """The (shared) kind object registered as ``name``; an unknown kind is a ConfigError."""
    if name not in _INSTANCES:
        _INSTANCES[name] = TASK_KINDS.get(name)()
    return _INSTANCES[name]


def make_task(kind: str, name: str, channels: int | None = None, **options: Any) -> Task:
    """A task of the registered ``kind`` (its metrics and main metric), e.g. ``make_task("binary", "fg")``."""
    return kind_of(kind).make(name, channels, **options)


# ---------------------------------------------------------------------- helpers the kinds share


def valid_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; zero (with a graph) when nothing is valid."""
    n = mask.sum()
    return (values * mask).sum() / n.clamp(min=1)


def loss_precision(pred: Tensor) -> Tensor:
    """``pred`` in at least float32: half-precision outputs (AMP) are upcast, float64 stays float64.

    Losses are computed in full precision; a float64 model (the trajectory test's reference run)
    keeps float64 losses instead of being rounded to float32 there.
    """
    return pred if pred.dtype == torch.float64 else pred.float()


def label_map(array: np.ndarray, task: Task, what: str, ignore: int, classes: int) -> str | None:
    """A problem with an (H, W) integer label map: dtype, shape, values outside [0, classes) and ``ignore``."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        return f"{what} must be (H, W), got shape {tuple(array.shape)}"
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            return f"{what} holds NaN/inf"
        if (array != np.round(array)).any():
            return f"{what} holds non-integer values"
    elif array.dtype.kind not in "iub":
        return f"{what} has dtype {array.dtype}, expected integers"
    values = array.astype(np.int64)
    bad = (values != ignore) & ((values < 0) | (values >= classes))
    if bad.any():
        found = np.unique(values[bad])[:5].tolist()
        return f"{what} holds label(s) {found} outside [0, {classes}) and not ignore_index={ignore}"
    return None


def labels_from_file(array: np.ndarray) -> Tensor:
    """An (H, W) int64 label tensor from an (H, W) or (1, H, W) array (other shapes kept, for the check to name).

    Class ids are integers: a float file with a value such as 1.5 or NaN is refused (a cast would
    silently make it class 1), one of whole numbers (1.0) is read as those classes.
    """
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise ValueError(
                f"class ids must be integers, got {array.dtype} value(s) such as "
                f"{float(array[bad].flat[0])!r} ({int(bad.sum())} pixel(s))"
            )
    elif array.dtype.kind not in "iub":
        raise ValueError(f"class ids must be integers, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64))


def float_maps_from_file(array: np.ndarray, channels: int) -> Tensor:
    """A (C, H, W) float32 tensor from an (H, W), (H, W, C) or (C, H, W) array."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[0] != channels and a.shape[-1] == channels:
        a = np.moveaxis(a, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def present_tasks(names: list[str], batch: dict[str, Tensor]) -> list[str]:
    """The tasks of ``names`` with a labelled sample in ``batch``: their target is there and, when the batch
    carries their ``"<task>/labelled"`` mask (:func:`mtlkit.tasks.base.labelled_key`), it is true somewhere."""
    out = []
    for n in names:
        if n not in batch:
            continue
        mask = batch.get(labelled_key(n))
        if mask is None or bool(mask.any()):
            out.append(n)
    return out


def task_loss(task: Task, pred: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """``task``'s loss over the labelled samples of ``batch`` (all of them without a ``labelled`` mask).

    The kind's loss is taken on the labelled rows alone, so it averages over those samples (their
    valid pixels) exactly as on a batch of only them; unlabelled samples add nothing to the loss or
    its gradient.
    """
    target = batch[task.name]
    mask = batch.get(labelled_key(task.name))
    if mask is not None and not bool(mask.all()):
        rows = mask.reshape(-1).nonzero().reshape(-1)
        pred, target = pred.index_select(0, rows), target.index_select(0, rows)
    return task.loss(pred, target)


def stack_losses(tasks: list[Task], preds: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
    """The K task losses of one batch as a vector, in task order."""
    return torch.stack([t.loss(preds[t.name], batch[t.name]) for t in tasks])


def label_colormap(n: int) -> Colormap:
    """A qualitative matplotlib colormap of ``n`` colours (tab10, tab20 beyond ten classes)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    base = matplotlib.colormaps["tab20"] if n > 10 else matplotlib.colormaps["tab10"]
    return ListedColormap([base(i % base.N) for i in range(max(n, 1))])


def draw_labels(ax: Axes, labels: np.ndarray, classes: int, ignore: int) -> None:
    """Class ids in colours, ``ignore`` pixels black."""
    shown = np.ma.masked_where(labels == ignore, labels)
    ax.imshow(shown, cmap=label_colormap(classes), vmin=-0.5, vmax=classes - 0.5, interpolation="nearest")
    ax.set_facecolor("black")
