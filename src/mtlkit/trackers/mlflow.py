"""MLflow: one MLflow run per mtlkit run, through ``MlflowClient`` (no global active run).

Options (``train.tracker_options.mlflow``): ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``,
else the folder ``<out_dir>/mlruns``: a local file store, which MLflow 3 accepts only with
``MLFLOW_ALLOW_FILE_STORE=true``, set here for folder URIs), ``experiment`` (default ``mtlkit``),
``max_retries`` and ``timeout`` of HTTP requests (default 2 and 10 s; the calls run on the
tracker's own thread, so they never block training).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from mtlkit.records import EpochRecord
from mtlkit.trackers.base import epoch_scalars, flatten
from mtlkit.trackers.ids import read_id, write_id
from mtlkit.train.logging import Logger

#: mtlkit's final statuses as MLflow run statuses
STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
OPTIONS = ("tracking_uri", "experiment", "max_retries", "timeout")


def _is_folder(uri: str) -> bool:
    """Whether a tracking URI is a local folder (a file store)."""
    return uri.startswith("file:") or "://" not in uri


class MlflowTracker(Logger):
    """Params: the flattened resolved config; metrics per epoch at step = epoch; files as artifacts; status."""

    name = "mlflow"

    def __init__(self, run_path: Path, options: dict[str, Any]) -> None:
        unknown = [k for k in options if k not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} (allowed: {', '.join(OPTIONS)})")
        uri = (
            options.get("tracking_uri")
            or os.environ.get("MLFLOW_TRACKING_URI")
            or (Path(run_path).parent / "mlruns").resolve().as_uri()
        )
        uri = str(uri)
        if _is_folder(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for key, env, default in (
            ("max_retries", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", 2),
            ("timeout", "MLFLOW_HTTP_REQUEST_TIMEOUT", 10),
        ):
            if key in options:
                os.environ[env] = str(options[key])
            else:
                os.environ.setdefault(env, str(default))
        from mlflow.tracking import MlflowClient

        self.run_path = Path(run_path)
        self.client = MlflowClient(tracking_uri=uri)
        name = str(options.get("experiment", "mtlkit"))
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        run_id = read_id(self.run_path, self.name)
        if run_id is None:
            run = self.client.create_run(
                exp_id, run_name=self.run_path.name, tags={"mtlkit.run_dir": str(self.run_path.resolve())}
            )
            run_id = run.info.run_id
            write_id(self.run_path, self.name, run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config, one parameter per dotted key (values as text, at most 6000 characters)."""
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i : i + 100])

    def log_epoch(self, record: EpochRecord) -> None:
        """Losses, validation metrics, task weights and lr at step = epoch (non-finite values left out)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, int(record.epoch)) for k, v in epoch_scalars(record).items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifact(self, path: Path) -> None:
        """Copy the file into the MLflow run's artifacts."""
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        """Mark the MLflow run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))
