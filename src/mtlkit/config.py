"""Typed, validated run configuration loaded from YAML with dotted ``key=value`` overrides.

Unknown keys and wrong types raise :class:`ConfigError` with a one-line message naming the key.
Method- and architecture-specific settings live in ``options`` dicts, validated by the class that
receives them (its constructor's keyword arguments).
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mtlkit._deprecation import MtlkitDeprecationWarning
from mtlkit.errors import ConfigError, shorten
from mtlkit.readers import load_yaml, read_yaml_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``true``/``false`` where a number is expected is an error, not 1/0 (pydantic's lax default)."""
        if isinstance(value, bool) and info.field_name is not None:
            allowed = _types(cls.model_fields[info.field_name].annotation)
            if bool not in allowed and Any not in allowed and allowed & {int, float}:
                raise ValueError("expected a number, got a boolean")
        return value


#: most segmentation classes / head channels of a task (``tasks.base.MAX_CHANNELS``): larger heads do
#: not fit in memory (ImageNet-21k has 21,841 classes); refused before any model is built
MAX_CLASSES = 100_000
#: largest input side in pixels
MAX_SIDE = 16_384
#: largest channel multiplier (x16 of SegNet is 256 x its 25M parameters)
MAX_WIDTH = 16.0
#: longest run or sweep name: a folder name (255 bytes on most file systems) less the run's
#: ``-YYYYmmdd-HHMMSS-N`` suffix
MAX_NAME_LENGTH = 200


def folder_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a run's or sweep's folder name inside its ``out_dir``, or None.

    One plain folder name: a non-empty string without ``/``, ``\\``, control characters or a
    leading ``.`` (no ``..``, no absolute path, no nesting, no hidden folder), so every file a
    run writes stays inside ``out_dir``.
    """
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long, at most {MAX_NAME_LENGTH}"
    if "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must be one plain folder name (no '/', '\\' or control characters)"
    if name.startswith("."):
        return "must not start with '.' (no '.', '..' or hidden folders)"
    return None


def _types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None`` -> {int, NoneType})."""
    args = get_args(annotation)
    if not args or get_origin(annotation) is Literal:
        return {annotation}
    return set().union(*(_types(a) for a in args))


class DatasetConfig(_Strict):
    """Which data, where, and at what size. ``root`` is the dataset folder (scenes: its cache)."""

    name: str = "scenes"
    root: str | None = None
    num_classes: int | None = Field(
        default=None, ge=2, le=MAX_CLASSES, description="segmentation classes; None = dataset default"
    )
    height: int | None = Field(default=None, ge=8, le=MAX_SIDE, description="input height; None = dataset default")
    width: int | None = Field(default=None, ge=8, le=MAX_SIDE, description="input width; None = dataset default")
    n_train: int | None = Field(default=None, ge=1, description="training samples (scenes: generated; else a cap)")
    n_val: int | None = Field(default=None, ge=1, description="validation samples (scenes: generated; else a cap)")
    tasks: list[str] | None = Field(
        default=None, min_length=1, description="subset of the dataset's tasks to train; None = all"
    )
    augment: bool = False
    seed: int = Field(default=0, description="seed of the scene generator")
    label_fraction: dict[str, float] = Field(
        default_factory=dict,
        description="{task: fraction in (0, 1]}: keep that seeded, fixed subset of the task's training labels "
        "(mtlkit.data.partial); unset = every label",
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("label_fraction")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        """Each fraction is in (0, 1] (0 would train a task on nothing)."""
        for task, f in value.items():
            if not 0 < f <= 1:
                raise ValueError(f"label_fraction.{task} must be in (0, 1], got {f}")
        return value


class ModelConfig(_Strict):
    arch: str = "mtan"
    backbone: str | None = Field(
        default=None, description="segnet | resnet{18,34,50}_dilated | wrn28 | alexnet; None = the arch's own"
    )
    pretrained: str = Field(default="none", description="backbone weights: none | imagenet | path to a state dict")
    width: float = Field(
        default=1.0, gt=0, le=MAX_WIDTH, allow_inf_nan=False, description="channel multiplier of every layer"
    )
    align_corners: bool = Field(
        default=False,
        description="ResNet DeepLabV3 heads upsample with align_corners=True "
        "(the MTAN authors' and LibMTL's setting); false = torchvision's",
    )
    init_from: dict[str, str] | None = Field(
        default=None,
        description="{task: run folder}: start each task's network (nets.<task>, heads.<task>) from that "
        "one-task run's best.pt (Misra et al.'s one-task initialisation); same backbone and width",
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _no_section_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """``model.options.align_corners`` (or pretrained, ...) would reach the model twice: name the right key."""
        for key in value:
            if key in cls.model_fields and key != "options":
                raise ValueError(f"{key} is set as model.{key}, not under model.options")
        return value


#: keys added after run hashes were first published, with their default: a config leaves them out of
#: its hash while at that default, so the runs and sweeps made before the key existed keep their hashes
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "model.align_corners": False,
    "model.init_from": None,
    "dataset.label_fraction": {},
}


def _hash_logger_switch(train: dict[str, Any]) -> None:
    """Put back the deprecated ``train.tensorboard`` key the hash was computed with (in place), so every config
    and run folder keeps the hash it had: a config without the key hashes as the old form of the same switch,
    ``loggers: []`` as ``tensorboard: false`` beside the default ``loggers: [tensorboard]``, any other list
    beside ``tensorboard: true``; a config that still sets the key hashes with it as given."""
    if train.get("tensorboard") is None:
        train["tensorboard"] = bool(train["loggers"])
        train["loggers"] = train["loggers"] or ["tensorboard"]


class WeightingConfig(_Strict):
    name: str = "equal"
    mode: Literal["parameters", "representation"] = "parameters"
    grad_path: Literal["loop", "batched", "gramian"] = Field(
        default="loop",
        description="how per-task gradients are computed: K backward passes (loop) or one vmapped pass "
        "(batched) giving the K x D matrix, or, for Gramian-only methods, the K x K Gramian a block at a "
        "time and one backward of the weighted losses (gramian); the same update up to float rounding, "
        "fixed so results never depend on timing",
    )
    options: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    momentum: float = Field(default=0.9, ge=0, allow_inf_nan=False)
    step_size: int = Field(default=100, ge=1, description="epochs between learning-rate decays")
    gamma: float = Field(default=0.5, gt=0, le=1, allow_inf_nan=False, description="learning-rate decay factor")


#: the names train.loggers accepts (mtlkit.trackers.LOGGERS)
LoggerName = Literal["tensorboard", "mlflow", "wandb"]


def _default_loggers() -> list[LoggerName]:
    """``train.loggers``' default: TensorBoard events in the run's ``tb/``."""
    return ["tensorboard"]


class TrainConfig(_Strict):
    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=2, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    num_workers: int = Field(default=0, ge=0)
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    compile: bool | None = None
    channels_last: bool | None = None
    max_steps_per_epoch: int | None = Field(default=None, ge=1, description="cap on steps per epoch (smoke tests)")
    grad_clip: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    progress: bool = True
    tensorboard: bool | None = Field(
        None, description="deprecated: TensorBoard is on when train.loggers names it; false here leaves it out"
    )
    loggers: list[LoggerName] = Field(
        default_factory=_default_loggers, description="experiment trackers (mlflow, wandb: mtlkit[trackers])"
    )
    tracker_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per tracker, e.g. {mlflow: {tracking_uri: ..., experiment: ...}}"
    )

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as false: accept it as "off"."""
        return "off" if value is False else value

    @field_validator("tensorboard")
    @classmethod
    def _deprecated_tensorboard(cls, value: bool | None) -> bool | None:
        """The old switch still works for one release: false leaves tensorboard out of ``train.loggers``."""
        if value is not None:
            instead = (
                "train.loggers without tensorboard (train.loggers: [] for none)"
                if value is False
                else "nothing: TensorBoard is on when train.loggers names it, as by default"
            )
            warnings.warn(
                f"train.tensorboard is deprecated and goes in the next release: use {instead}",
                MtlkitDeprecationWarning,
                stacklevel=2,
            )
        return value


class EvalConfig(_Strict):
    """How validation metrics are computed and reported (see ``mtlkit.metrics.protocols``)."""

    protocol: Literal["pooled", "mtan_official", "mtan_paper"] = "pooled"
    batch_size: int | None = Field(
        default=None, ge=1, description="images per batch of the MTAN protocols' batch means; None = train.batch_size"
    )
    select_best: bool = Field(
        default=True,
        description="keep a best epoch (checkpoints/best.pt, results' best); "
        "false when the validation split is the one the table reports",
    )
    report_last: int = Field(default=1, ge=1, description="reports average the last K epochs' metrics by default")


class Config(_Strict):
    """A whole run: data, model, weighting, optimiser, training loop."""

    name: str = Field(default="run", description="the run folder's name: <out_dir>/<name>-<YYYYmmdd-HHMMSS>")
    out_dir: str = "runs"
    seed: int = 0
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, value: str) -> str:
        """A run name is one folder name inside ``out_dir`` (``../x``, ``/abs``, ``a/b``, ``.`` are refused)."""
        problem = folder_name_problem(value)
        if problem is not None:
            raise ValueError(f"run name {problem}")
        return value

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data["train"]["tensorboard"] is None:  # the deprecated key, written only where a config sets it
            del data["train"]["tensorboard"]
        return data

    def hashed_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the :data:`HASH_NEUTRAL_DEFAULTS` keys that are at their default, with the
        logger switch as it was hashed before train.tensorboard was deprecated (:func:`_hash_logger_switch`)."""
        data = self.to_dict()
        _hash_logger_switch(data["train"])
        for key, default in HASH_NEUTRAL_DEFAULTS.items():
            section, name = key.split(".")
            if data[section].get(name) == default:
                del data[section][name]
        return data

    def hash(self) -> str:
        """Short stable hash of the resolved config (provenance in results and reports)."""
        blob = json.dumps(self.hashed_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _parse_value(text: str) -> Any:
    """A CLI override value, read as YAML so ``5``, ``1e-3``, ``true``, ``[a, b]`` and ``null`` work."""
    try:
        value = load_yaml(text, "override")
    except ConfigError:
        return text
    if isinstance(value, str) and _looks_numeric(value):
        return float(value)
    return value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), _parse_value(raw), where="override")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str = "sweep") -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections (a value in the way: error)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: key {key!r} has an empty part")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict):
            msg += f" (got {shorten(first['input'])})"
    more = len(err.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    return f"{source}: {loc}: {msg}{tail}"


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict into a :class:`Config`; errors name the key."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; missing file, bad YAML or bytes that are not UTF-8: a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (or the defaults when None), apply overrides, validate."""
    if path is not None and Path(path).is_dir():
        raise ConfigError(
            f"{path}: is a folder, not a config file (to continue a run in it: mtlkit train --resume FOLDER)"
        )
    data = read_yaml(path) if path is not None else {}
    empty = path is not None and not data
    apply_overrides(data, list(overrides or []))
    if empty:
        raise ConfigError(
            f"{path}: empty config file; it would train every default for "
            f"{TrainConfig().epochs} epochs. Put settings in it (see configs/demo.yaml), or give "
            "no file and only key=value overrides"
        )
    return config_from_dict(data, source=str(path) if path is not None else "overrides")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from mtlkit.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
