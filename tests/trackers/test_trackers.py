"""The loggers: one interface and one registry; background loggers (never block, warn once), MLflow on a real file
store read back through MlflowClient, W&B offline files, refusal without the extra; the old names still work."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from helpers.runs import train_until_killed
from mtlkit.errors import ConfigError
from mtlkit.records import EpochRecord
from mtlkit.trackers import check_loggers, epoch_scalars, flatten, open_loggers, opener
from mtlkit.train.logging import Background, Logger, Loggers


def background(openers: dict) -> Loggers:
    """``{name: opener}`` as a set of background loggers."""
    return Loggers([Background(name, make) for name, make in openers.items()])


class Recorder(Logger):
    """Keeps every call; optionally slow, or raising from a given method."""

    name = "recorder"

    def __init__(self, delay: float = 0.0, fail_in: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.delay, self.fail_in = delay, fail_in

    def _do(self, method: str, arg: Any) -> None:
        time.sleep(self.delay)
        if method == self.fail_in:
            raise ConnectionError("server down\nsecond line")
        self.calls.append((method, arg))

    def log_params(self, params):
        self._do("log_params", params)

    def log_epoch(self, record):
        self._do("log_epoch", record.epoch)

    def log_artifact(self, path):
        self._do("log_artifact", Path(path).name)

    def finish(self, status):
        self._do("finish", status)


RECORD = EpochRecord(epoch=1, lr=0.1, train={"loss/a": 2.0}, val={"a/acc": 0.5}, weights={"a": 1.0})


def test_flatten_and_epoch_scalars() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
        "f": None,
    }
    assert epoch_scalars(RECORD) == {"train/loss/a": 2.0, "val/a/acc": 0.5, "weights/a": 1.0, "lr": 0.1}
    assert epoch_scalars(RECORD.to_dict()) == epoch_scalars(RECORD)  # a metrics.jsonl line gives the same


def test_slow_tracker_never_blocks_and_gets_everything_in_order(tmp_path: Path) -> None:
    slow = Recorder(delay=0.3)
    trackers = background({"slow": lambda: slow})
    (tmp_path / "results.json").write_text("{}")
    start = time.perf_counter()
    trackers.log_params({"x": 1})
    for epoch in (1, 2, 3):
        trackers.log_epoch(replace(RECORD, epoch=epoch))
    trackers.log_artifact(tmp_path / "results.json")
    trackers.log_artifact(tmp_path / "missing.json")  # skipped
    assert time.perf_counter() - start < 0.1  # 5 calls of 0.3 s each queued, none waited for
    trackers.finish("finished")
    assert slow.calls == [
        ("log_params", {"x": 1}),
        ("log_epoch", 1),
        ("log_epoch", 2),
        ("log_epoch", 3),
        ("log_artifact", "results.json"),
        ("finish", "finished"),
    ]
    assert trackers.errors == {}


def test_failing_tracker_warns_once_and_the_others_go_on() -> None:
    bad, good = Recorder(fail_in="log_epoch"), Recorder()
    trackers = background({"bad": lambda: bad, "good": lambda: good})
    with pytest.warns(RuntimeWarning) as caught:
        for epoch in (1, 2, 3):
            trackers.log_epoch(replace(RECORD, epoch=epoch))
        trackers.finish("finished")
    messages = [str(w.message) for w in caught if "tracker" in str(w.message)]
    assert messages == ["mtlkit: tracker bad failed (ConnectionError: server down); training goes on without it"]
    assert trackers.errors == {"bad": "ConnectionError: server down"} and bad.calls == []
    assert good.calls == [("log_epoch", 1), ("log_epoch", 2), ("log_epoch", 3), ("finish", "finished")]

    def broken_open() -> Logger:
        raise OSError("cannot reach host")

    with pytest.warns(RuntimeWarning, match="tracker x failed \\(OSError: cannot reach host\\)"):
        opened = background({"x": broken_open})
        opened.log_epoch(RECORD)
        opened.finish("failed")


def test_unknown_or_missing_tracker_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, tiny_cfg) -> None:
    import importlib.util

    from mtlkit.config import config_from_dict

    with pytest.raises(ConfigError, match="train.loggers.0: Input should be 'tensorboard', 'mlflow' or 'wandb'"):
        config_from_dict({"train": {"loggers": ["neptune"]}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^train.loggers: wandb needs wandb: pip install 'mtlkit\[trackers\]'$"):
        check_loggers(["tensorboard", "wandb"], {})
    with pytest.raises(ConfigError, match="train.tracker_options: unknown tracker 'mlfow'"):
        check_loggers(["tensorboard"], {"mlfow": {}})
    from mtlkit.train.trainer import train

    cfg = tiny_cfg(train={"loggers": ["wandb"]})
    with pytest.raises(ConfigError, match="needs wandb"):
        train(cfg)


@pytest.mark.slow
def test_mlflow_file_store_read_back_and_resume_continues_the_run(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed in epoch 2, then resumed: one MLflow run with both epochs, params, artifacts, FINISHED."""
    pytest.importorskip("mlflow", reason="needs the trackers extra: pip install 'mtlkit[trackers]'")
    from mlflow.tracking import MlflowClient

    from mtlkit.train.trainer import train

    uri = (tmp_path / "mlruns").resolve().as_uri()
    cfg = tiny_cfg(
        train={
            "loggers": ["tensorboard", "mlflow"],
            "tracker_options": {"mlflow": {"tracking_uri": uri, "experiment": "tiny"}},
        }
    )
    run_dir = tmp_path / "run"
    train_until_killed(cfg, run_dir, monkeypatch, at_step=6)  # 4 steps per epoch: dies in epoch 2
    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert client.get_run(run_id).info.status == "FAILED"
    train(resume=run_dir)
    run = client.get_run(run_id)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the resume continued the same MLflow run
    assert run.data.params["model.arch"] == "mtan" and float(run.data.params["optim.lr"]) == 1e-3
    assert run.data.params["train.loggers"] == "['tensorboard', 'mlflow']"
    for key in ("val/segmentation/miou", "train/loss/depth", "weights/normal", "lr"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [g[0] for g in got] == [r["epoch"] for r in history] == [1, 2], key
        assert [g[1] for g in got] == pytest.approx([epoch_scalars(r)[key] for r in history]), key
    assert {a.path for a in client.list_artifacts(run_id)} >= {"results.json", "config.yaml", "metrics.jsonl"}
    local = Path(client.download_artifacts(run_id, "results.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == json.loads((run_dir / "results.json").read_text())
    assert any((run_dir / "tb").iterdir())


def test_unreachable_mlflow_server_warns_once_and_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracking server that refuses connections: the calls return at once, one warning, the rest dropped."""
    pytest.importorskip("mlflow", reason="needs the trackers extra: pip install 'mtlkit[trackers]'")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    trackers = Loggers(
        open_loggers(["mlflow"], tmp_path / "run", {"mlflow": {"tracking_uri": "http://127.0.0.1:9", "timeout": 2}})
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        trackers.log_params({"model": {"arch": "mtan"}})
        for epoch in range(1, 51):
            trackers.log_epoch(replace(RECORD, epoch=epoch))
        trackers.log_artifact(tmp_path / "run" / "results.json")
        assert time.perf_counter() - start < 0.5  # 52 calls, none waits for the network
        trackers.finish("finished")
    messages = [str(w.message) for w in caught if "tracker mlflow" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("mtlkit: tracker mlflow failed (")
    assert "127.0.0.1:9" in trackers.errors["mlflow"] or "Connection" in trackers.errors["mlflow"]


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B ``.wandb`` file: a 7-byte ``:W&B`` header, then a LevelDB-style log of
    32 KiB blocks whose chunks (crc32, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) hold the records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a chunk header
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_writes_its_run_files(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline W&B: the run file holds the config, one history row per epoch, the saved files and exit 0."""
    pytest.importorskip("wandb", reason="needs the trackers extra: pip install 'mtlkit[trackers]'")
    from mtlkit.train.trainer import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_cfg(train={"loggers": ["wandb"], "tracker_options": {"wandb": {"mode": "offline", "project": "tiny"}}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(cfg, run_dir=tmp_path / "run")
    assert not [str(w.message) for w in caught if "tracker wandb" in str(w.message)]
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    folders = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1
    files = folders[0] / "files"
    assert json.loads((files / "results.json").read_text()) == json.loads((run / "results.json").read_text())
    assert (files / "config.yaml").is_file() and (files / "metrics.jsonl").is_file()
    deadline = time.monotonic() + 60
    while True:  # wandb's service process may still be writing the file when finish() returned
        records = wandb_records(folders[0] / f"run-{run_id}.wandb")
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert config["model"]["arch"] == "mtan" and config["train"]["loggers"] == ["wandb"]
    rows = [
        {i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row, rec in zip(rows, history):
        assert row["val/segmentation/miou"] == pytest.approx(rec["val"]["segmentation/miou"])
        assert row["weights/depth"] == pytest.approx(rec["weights"]["depth"])
    saved = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert {"results.json", "config.yaml", "metrics.jsonl"} <= saved
    assert kinds.count("exit") == 1 and next(r for r in records if r.HasField("exit")).exit.exit_code == 0


def test_a_hung_tracker_costs_the_close_timeout_once_and_warns_once() -> None:
    """Two trackers stuck in their first call: the end of the run waits close_timeout in all, not per tracker,
    and a tracker that fails after being left behind does not warn a second time."""
    import threading

    from mtlkit.train.logging import CLOSE_TIMEOUT

    release = threading.Event()

    class Stuck(Recorder):
        def log_epoch(self, record):
            release.wait()
            raise ConnectionError("gave up")

    trackers = Loggers([Background("a", Stuck), Background("b", Stuck)], close_timeout=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trackers.log_epoch(RECORD)
        start = time.perf_counter()
        trackers.finish("finished")
        waited = time.perf_counter() - start
        release.set()
        for w in trackers.background():
            w.thread.join(5)
    assert 0.5 <= waited < 0.5 + 0.4  # one shared deadline (two trackers: not 2 x 0.5 s)
    messages = sorted(str(w.message) for w in caught if "mtlkit: tracker" in str(w.message))
    assert len(messages) == 2 and all("still sending after 0.5 s" in m for m in messages)
    assert CLOSE_TIMEOUT <= 5.0  # "a few seconds" at most at the end of a run


def test_mlflow_on_a_closed_port_with_default_retries_costs_seconds(tmp_path: Path) -> None:
    """127.0.0.1:1 refuses connections; with MLflow's retries as mtlkit sets them the run's end is bounded."""
    pytest.importorskip("mlflow", reason="needs the trackers extra: pip install 'mtlkit[trackers]'")
    from mtlkit.train.logging import CLOSE_TIMEOUT

    (tmp_path / "run").mkdir()
    trackers = background({"mlflow": opener("mlflow", tmp_path / "run", {"tracking_uri": "http://127.0.0.1:1"})})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trackers.log_params({"model": {"arch": "mtan"}})
        trackers.log_epoch(RECORD)
        start = time.perf_counter()
        trackers.finish("finished")
        assert time.perf_counter() - start < CLOSE_TIMEOUT + 0.5
    assert len([w for w in caught if "mtlkit: tracker mlflow" in str(w.message)]) == 1


@pytest.mark.slow
def test_wandb_with_a_key_and_no_server_costs_seconds_and_warns_once(tmp_path: Path) -> None:
    """A W&B key and a server that refuses connections: the whole process (start, run end, exit) is bounded,
    with one warning (W&B's own init timeout is 90 s; mtlkit sets 10)."""
    pytest.importorskip("wandb", reason="needs the trackers extra: pip install 'mtlkit[trackers]'")
    import os
    import subprocess
    import sys

    script = (
        "from pathlib import Path\nfrom mtlkit.records import EpochRecord\nfrom mtlkit.trackers import open_loggers\n"
        "from mtlkit.train.logging import Loggers\n"
        f"run = Path({str(tmp_path / 'run')!r}); run.mkdir()\n"
        "t = Loggers(open_loggers(['wandb'], run))\n"
        "t.log_params({'a': 1}); t.log_epoch(EpochRecord(epoch=1, train={'loss/x': 1.0}))\n"
        "t.finish('finished')\n"
    )
    env = {
        **os.environ,
        "WANDB_API_KEY": "a" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:1",
        "WANDB_MODE": "online",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("mtlkit: tracker wandb") == 1, proc.stderr
    assert took < 30  # before: over 90 s (W&B's init timeout), two warnings


def test_one_logger_interface_and_one_registry() -> None:
    """Every registered logger, every logger class in the tree and the config's choices: one base, one table."""
    import importlib
    import importlib.util
    import inspect
    import pkgutil
    from typing import get_args

    import mtlkit.trackers
    from mtlkit.config import TrainConfig
    from mtlkit.trackers import LOGGERS, logger_class

    assert set(get_args(TrainConfig.model_fields["loggers"].annotation.__args__[0])) == set(LOGGERS)
    for name, entry in LOGGERS.items():
        if entry.package is not None and importlib.util.find_spec(entry.package) is None:
            continue
        cls = logger_class(name)
        assert issubclass(cls, Logger) and cls.name == name, name
    modules = ["mtlkit.train.logging"] + [
        f"mtlkit.trackers.{m.name}"
        for m in pkgutil.iter_modules(mtlkit.trackers.__path__)
        if not m.name.startswith("_")
    ]
    for module in modules:
        if (
            module.rsplit(".", 1)[1] in LOGGERS
            and LOGGERS[module.rsplit(".", 1)[1]].package is not None
            and importlib.util.find_spec(LOGGERS[module.rsplit(".", 1)[1]].package) is None
        ):
            continue
        for _, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if cls.__module__ == module and hasattr(cls, "log_epoch"):
                assert issubclass(cls, Logger), f"{module}.{cls.__name__}: a logger that is not a Logger"


def test_the_run_status_reaches_background_loggers() -> None:
    """An interrupt closes them as killed, an exception as failed, a clean end as finished; once each."""
    from mtlkit.train.logging import ended_status, run_logging

    assert ended_status(KeyboardInterrupt()) == ended_status(SystemExit(1)) == "killed"
    assert ended_status(RuntimeError("x")) == "failed"
    for error, status in ((KeyboardInterrupt, "killed"), (RuntimeError, "failed"), (None, "finished")):
        rec = Recorder()
        logs = background({"r": lambda rec=rec: rec})
        try:
            with run_logging(logs):
                logs.log_epoch(RECORD)
                if error is not None:
                    raise error
        except BaseException as err:  # noqa: BLE001 - the test raises them
            assert isinstance(err, error)
        logs.finish("finished")  # a second finish is not sent
        assert rec.calls == [("log_epoch", 1), ("finish", status)], status


def test_fit_loggers_names_objects_and_the_deprecated_tensorboard_keyword() -> None:
    from mtlkit.trackers import split_loggers

    mine = Recorder()
    assert split_loggers(("tensorboard",)) == (["tensorboard"], [])
    assert split_loggers(["mlflow", mine, "mlflow"]) == (["mlflow"], [mine])
    assert split_loggers("tensorboard") == (["tensorboard"], [])
    assert split_loggers([]) == ([], [])
    with pytest.warns(DeprecationWarning, match=r"fit\(tensorboard=...\) is deprecated"):
        assert split_loggers(["tensorboard", mine], tensorboard=False) == ([], [mine])
    with pytest.warns(DeprecationWarning):
        assert split_loggers([mine], tensorboard=True) == (["tensorboard"], [mine])
    with pytest.raises(ConfigError, match=r"^fit\(loggers=...\): 'neptune' is neither a logger name"):
        split_loggers(["neptune"])


def test_train_tensorboard_is_deprecated_and_means_what_it_meant(tmp_path: Path) -> None:
    """The old switch: a DeprecationWarning, the same loggers, the same config hash; the new configs never write it."""
    from mtlkit.config import config_from_dict, load_config
    from mtlkit.trackers import logger_names

    with pytest.warns(DeprecationWarning, match="train.tensorboard is deprecated"):
        old = config_from_dict({"train": {"tensorboard": False}})
    new = config_from_dict({"train": {"loggers": []}})
    assert logger_names(old) == logger_names(new) == []
    assert old.hash() == new.hash() == "58aef6da43c7"  # the hash train.tensorboard: false had
    with pytest.warns(DeprecationWarning):
        both = config_from_dict({"train": {"tensorboard": False, "loggers": ["tensorboard", "mlflow"]}})
    assert logger_names(both) == ["mlflow"] and both.hash() == "1e1741483d30"
    with pytest.warns(DeprecationWarning):
        on = load_config(None, ["train.tensorboard=true"])
    assert logger_names(on) == ["tensorboard"] and on.hash() == load_config(None).hash() == "8db0444c30c1"
    assert config_from_dict({"train": {"loggers": ["mlflow"]}}).hash() == "fea42b8dfdf2"
    assert "tensorboard" not in load_config(None).to_dict()["train"]
    assert old.to_dict()["train"]["tensorboard"] is False  # kept where a config sets it: its hash stays
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["train.loggers=[]"])  # the new switch does not warn


def test_an_old_run_folder_config_keeps_its_hash(tmp_path: Path) -> None:
    """config.yaml as written before the deprecation (every key, train.tensorboard too) keeps the hash in results."""
    import yaml

    from mtlkit.config import load_config

    for tensorboard, loggers, expected in (
        (True, ["tensorboard"], "8db0444c30c1"),
        (False, ["tensorboard"], "58aef6da43c7"),
        (True, [], "19deecc6362d"),
        (False, [], "775bb6215d32"),
    ):
        data = load_config(None).to_dict()
        data["train"].update(tensorboard=tensorboard, loggers=loggers)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.warns(DeprecationWarning):
            cfg = load_config(tmp_path / "config.yaml")
        assert cfg.hash() == expected, (tensorboard, loggers)
        (tmp_path / "again.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        with pytest.warns(DeprecationWarning):
            assert load_config(tmp_path / "again.yaml").hash() == expected  # a resume rewrites config.yaml


def test_old_tracker_names_still_work_with_a_warning(tmp_path: Path) -> None:
    import mtlkit.train.logging as logging_module

    with pytest.warns(DeprecationWarning, match="mtlkit.trackers.Tracker is deprecated"):
        from mtlkit.trackers import Tracker
    with pytest.warns(DeprecationWarning, match="mtlkit.trackers.Trackers is deprecated"):
        from mtlkit.trackers import Trackers
    with pytest.warns(DeprecationWarning):
        from mtlkit.trackers import TRACKERS
    with pytest.warns(DeprecationWarning, match="BaseLogger is deprecated"):
        assert logging_module.BaseLogger is Logger
    assert set(TRACKERS) == {"tensorboard", "mlflow", "wandb"}

    class Old(Tracker):  # the old tracker: log_epoch got the metrics.jsonl dict
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def log_params(self, params):
            pass

        def log_epoch(self, record):
            self.epochs.append(record["epoch"])

        def log_artifact(self, path):
            pass

        def finish(self, status):
            self.epochs.append(-1 if status == "finished" else -2)

    old = Old()
    trackers = Trackers({"old": lambda: old})
    trackers.log_epoch({"epoch": 1, "train": {"loss/a": 1.0}})
    trackers.log_epoch(replace(RECORD, epoch=2))
    trackers.finish("finished")
    assert old.epochs == [1, 2, -1] and trackers.errors == {}
