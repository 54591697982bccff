"""One step (forward + Balancer + optimizer), the loop's hooks, the renamed keywords and the always-on SyncBN."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlkit
from helpers.folders import write_folder
from mtlkit.balance import Balancer
from mtlkit.config import DatasetConfig, load_config
from mtlkit.data.folder import FolderBuilder
from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.records import EpochRecord
from mtlkit.tasks import Task, depth_task, segmentation_task
from mtlkit.train.hooks import Hook
from mtlkit.train.loop import Loop
from mtlkit.train.step import StepRunner
from mtlkit.weighting.base import Weighting

TASKS_YAML = (
    "tasks:\n  - {name: seg, kind: segmentation, channels: 3, options: {ignore_index: 255}}\n"
    "  - {name: fg, kind: binary}\n"
)
SRC = Path(__file__).resolve().parents[2] / "src" / "mtlkit"


class Recorder(Hook):
    """Every call, in order, and one results.json field."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_train(self, loop: Loop) -> None:
        self.calls.append("before_train")

    def after_train(self, loop: Loop) -> None:
        self.calls.append("after_train")

    def before_epoch(self, loop: Loop, epoch: int) -> None:
        self.calls.append(f"before_epoch {epoch}")

    def after_epoch(self, loop: Loop, record: EpochRecord) -> None:
        self.calls.append(f"after_epoch {record.epoch}")

    def before_step(self, loop: Loop, batch: dict[str, Tensor]) -> None:
        self.calls.append("before_step")

    def after_step(self, loop: Loop, batch: dict[str, Tensor], losses: Tensor) -> None:
        assert losses.shape == (len(loop.tasks),) and not losses.requires_grad
        self.calls.append("after_step")

    def results(self) -> dict[str, Any]:
        return {"recorded": len(self.calls)}


def test_fit_calls_hooks_in_order_and_writes_their_results(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", TASKS_YAML, n_train=4, n_val=2)
    data = FolderBuilder(DatasetConfig(name="folder", root=str(tmp_path / "data"), height=32, width=32))
    tasks = data.tasks()
    torch.manual_seed(0)
    model = build_model("hps", tasks, width=0.125)
    hook = Recorder()
    run = mtlkit.fit(
        model,
        tasks,
        data.dataset("train", train=True),
        data.dataset("val", train=False),
        epochs=2,
        batch_size=2,
        run_dir=tmp_path / "run",
        progress=False,
        loggers=[],
        hooks=[hook],
    )
    epoch = ["before_step", "after_step"] * 2
    assert hook.calls == [
        "before_train",
        "before_epoch 0",
        *epoch,
        "after_epoch 1",
        "before_epoch 1",
        *epoch,
        "after_epoch 2",
        "after_train",
    ]
    results = json.loads((run / "results.json").read_text())
    assert results["recorded"] == len(hook.calls)
    assert results["eval"] == {"protocol": "pooled", "batch_size": 2, "select_best": True, "report_last": 1}


def _net() -> tuple[nn.Module, list[Task]]:
    tasks = [segmentation_task(3), depth_task()]
    torch.manual_seed(0)
    return build_model("hps", tasks, width=0.125), tasks


@pytest.mark.parametrize("name", ["equal", "dwa", "pcgrad"])
def test_every_step_reaches_the_method_through_the_balancer(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlkit.registry import WEIGHTINGS

    calls: list[bool] = []
    original = Balancer.backward

    def counted(self: Balancer, *args: Any, **kwargs: Any) -> Tensor:
        calls.append(self.weighting.needs_gradients)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Balancer, "backward", counted)
    model, tasks = _net()
    method = WEIGHTINGS.get(name)([t.name for t in tasks])
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "segmentation": torch.randint(0, 3, (2, 32, 32)),
        "depth": torch.rand(2, 1, 32, 32) + 0.1,
    }
    losses = StepRunner(model, method, tasks, torch.optim.SGD(model.parameters(), lr=0.1))(batch)
    assert calls == [method.needs_gradients] and losses.shape == (2,) and torch.isfinite(losses).all()


def test_the_trainer_holds_no_method_specific_code() -> None:
    """Capabilities are class attributes read as such: no isinstance on a method, no probing getattr."""
    for path in (SRC / "train").glob("*.py"):
        text = path.read_text()
        calls = {
            n.func.attr
            for n in ast.walk(ast.parse(text))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
        }
        assert not calls & {"combine", "aggregate"}, f"{path}: a method is reached only through the Balancer"
        assert not re.search(r"isinstance\([^)]*AutoLambda", text), path
        assert 'getattr(weighting, "supports_distributed"' not in text, path
        assert "sync_bn" not in text, path
    assert Weighting.supports_distributed and not Weighting.needs_meta_step
    assert mtlkit.weighting.AutoLambda.needs_meta_step and not mtlkit.weighting.AutoLambda.supports_distributed


def test_batchnorm_is_always_synchronised_and_has_no_setting(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """There is no ``train.sync_bn``: under torchrun every BatchNorm is synchronised (a no-op in one process)."""
    from mtlkit.train import trainer

    with pytest.raises(ConfigError, match="train.sync_bn: unknown key"):
        load_config(None, ["train.sync_bn=false"])
    converted: list[nn.Module] = []
    original = trainer.dist.convert_sync_batchnorm

    def spy(module: nn.Module, device: torch.device) -> nn.Module:
        converted.append(module)
        return original(module, device)

    monkeypatch.setattr(trainer.dist, "convert_sync_batchnorm", spy)
    trainer.train(tiny_cfg(train={"epochs": 1, "max_steps_per_epoch": 1}))
    assert len(converted) == 1


def test_old_keyword_names_warn_and_still_work(tmp_path: Path) -> None:
    trunk = nn.Linear(3, 4)
    x = torch.rand(5, 3)

    def losses() -> list[Tensor]:
        out = trunk(x)
        return [out[:, :2].pow(2).mean(), out[:, 2:].abs().mean()]

    with pytest.warns(DeprecationWarning, match=r"mtlkit.backward\(method=...\) is deprecated.*weighting="):
        mtlkit.backward(losses(), list(trunk.parameters()), method="pcgrad")
    with pytest.warns(DeprecationWarning, match=r"Balancer\(method=...\)"):
        balancer = Balancer(method="mgda", tasks=2)
    assert type(balancer.weighting).__name__ == "MGDA"
    with pytest.warns(DeprecationWarning, match="Balancer.method is deprecated"):
        assert balancer.method is balancer.weighting
    with pytest.warns(DeprecationWarning, match="Balancer.strategy is deprecated"):
        balancer.strategy = "batched"
    assert balancer.grad_path == "batched"
    assert Balancer("pcgrad", 2, grad_path="batched").grad_path == "batched"
    from mtlkit.train.trainer import load_run

    with (
        pytest.warns(DeprecationWarning, match=r"load_run\(which=...\)"),
        pytest.raises(ConfigError, match="not a run folder"),
    ):
        load_run(tmp_path, which="last")
    with pytest.raises(TypeError, match="unexpected keyword argument 'checkpont'"):
        load_run(tmp_path, checkpont="last")


def test_report_rows_ignore_every_key_that_cannot_change_results(tmp_path: Path) -> None:
    """The report's ignored keys are :data:`HASH_IGNORED` (one list) plus name and seed, sections included."""
    from helpers.report_fixtures import write_run
    from mtlkit.records import HASH_IGNORED
    from mtlkit.report.runs import collect
    from mtlkit.report.table import IGNORED_KEYS, build_tables

    assert set(IGNORED_KEYS) == {"name", "seed", *HASH_IGNORED}
    vals = {"segmentation/miou": 0.5, "segmentation/pix_acc": 0.6, "depth/abs_err": 0.5, "depth/rel_err": 0.2}
    write_run(tmp_path, "a", "mtan", "equal", 0, vals, extra_config={"train": {"loggers": []}})
    write_run(
        tmp_path,
        "b",
        "mtan",
        "equal",
        1,
        vals,
        extra_config={"train": {"loggers": ["mlflow"], "tracker_options": {"mlflow": {"experiment": "x"}}}},
    )
    (table,) = build_tables(collect([tmp_path]).runs)
    assert len(table.rows) == 1 and len(table.rows[0].runs) == 2
