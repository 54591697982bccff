"""Where and with what resources the runs of a sweep execute: the sweep file's ``executors`` section.

Every key can also be given on the command line (``mtlkit sweep --help``); a flag wins over the file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtlkit.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LocalOptions(_Strict):
    """This machine: ``parallel`` runs at once, each on its own GPU or its share of the CPU cores."""

    parallel: int = Field(1, ge=1, description="runs at once (1 = one after another, in this process)")
    threads_per_run: int | None = Field(None, ge=1, description="CPU threads per run; default: cores / parallel")


class SlurmOptions(_Strict):
    """One SLURM job (array task) per run through submitit; ``nodes * gpus_per_node`` GPUs per run."""

    cluster: Literal["slurm", "local", "debug"] = Field(
        "slurm", description="submitit executor: slurm (sbatch), local (same code path, no sbatch), debug"
    )
    partition: str | None = None
    time_min: int = Field(24 * 60, ge=1, description="wall-time limit per job; a run that times out is requeued")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0, description="> 1: one process per GPU, the run is a DDP job (torchrun-style)")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per process (also its thread count)")
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int | None = Field(None, ge=1, description="at most this many runs at once")
    max_requeues: int = Field(3, ge=0, description="time-outs after which a run is given up (preemptions: no limit)")
    setup: list[str] = Field(default_factory=list, description="shell lines before the job, e.g. module load ...")
    extra: dict[str, Any] = Field(default_factory=dict, description="more #SBATCH options (qos, account, ...)")
    folder: str | None = Field(None, description="submitit's logs and pickles; default <sweep>/slurm")


class RayOptions(_Strict):
    """One Ray task per run, placed by its declared resources; a dead worker's run is retried and resumes."""

    address: str | None = Field(
        None,
        description="Ray cluster address (auto, ray://host:10001); default: the running instance, else a local one",
    )
    num_cpus: float = Field(1, gt=0, description="CPUs per run (also its thread count)")
    num_gpus: float = Field(0, ge=0, description="GPUs per run (Ray sets CUDA_VISIBLE_DEVICES)")
    max_retries: int = Field(3, ge=0, description="times a run is restarted after its worker died")


class ExecutorOptions(_Strict):
    """The ``executors`` section of a sweep file."""

    local: LocalOptions = Field(default_factory=LocalOptions)
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)
    ray: RayOptions = Field(default_factory=RayOptions)


#: the executors ``mtlkit sweep --executor`` knows, and the optional extra each needs
EXECUTORS = {"local": None, "slurm": ("submitit", "slurm"), "ray": ("ray", "ray")}


def executor_options(raw: Any, where: str) -> ExecutorOptions:
    """Validate a sweep file's ``executors`` mapping; an error names the key."""
    if raw is None:
        return ExecutorOptions()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: executors must be a mapping (local/slurm/ray: options)")
    try:
        return ExecutorOptions.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{where}: executors.{loc}: {msg}") from None


def with_flags(options: ExecutorOptions, executor: str, flags: dict[str, Any]) -> ExecutorOptions:
    """``options`` with the non-None ``flags`` set on the section of ``executor`` (flags win over the file)."""
    merged = options.model_copy(deep=True)
    section = getattr(merged, executor)
    for key, value in flags.items():
        if value is not None:
            try:
                setattr(section, key, value)
            except ValidationError as err:
                raise ConfigError(f"--{key.replace('_', '-')}: {err.errors()[0]['msg']}") from None
    return merged


def require_extra(executor: str) -> None:
    """Refuse an executor whose optional dependency is missing, in one line naming the extra."""
    need = EXECUTORS.get(executor)
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: unknown (choose from {', '.join(EXECUTORS)})")
    if need is None:
        return
    import importlib.util

    module, extra = need
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--executor {executor} needs {module}: pip install 'mtlkit[{extra}]'")
