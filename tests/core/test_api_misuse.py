"""The Python API never returns a silently wrong result: each misuse is an error naming the argument.

``mtlkit.backward`` / ``Balancer.backward``: keyword-only arguments after ``shared_params``, NaN
losses, non-leaf shared parameters, losses without a graph or that never reach the shared
parameters, mapping keys that are not the tasks; nothing may reach ``.grad`` when it refuses.
``mtlkit.fit``: a task that no training batch carries, a batch without ``image``, a model output
without a task, a run folder holding another model's or method's fit, a run name that would leave
``runs/``: a ConfigError/TrainingError before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import mtlkit
from mtlkit.errors import ConfigError, TrainingError
from mtlkit.tasks import depth_task, segmentation_task


def _net() -> tuple[nn.Linear, nn.ModuleList, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3), nn.ModuleList([nn.Linear(3, 1) for _ in range(2)]), torch.randn(5, 4)


def _losses(trunk: nn.Module, heads: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    feats = trunk(x)
    return [h(feats).pow(2).mean() for h in heads]


def _no_grads(*modules: nn.Module) -> bool:
    return all(p.grad is None for m in modules for p in m.parameters())


def test_method_name_in_the_third_position_is_refused() -> None:
    trunk, heads, x = _net()
    with pytest.raises(TypeError):
        mtlkit.backward(_losses(trunk, heads, x), list(trunk.parameters()), "pcgrad")  # type: ignore[misc]
    with pytest.raises(TypeError, match="features: expected tensors, got str 'pcgrad'"):
        mtlkit.Balancer("equal", tasks=2).backward(
            _losses(trunk, heads, x), list(trunk.parameters()), features="pcgrad"
        )
    with pytest.raises(TypeError, match="weighting: expected a method name"):
        mtlkit.backward(_losses(trunk, heads, x), list(trunk.parameters()), weighting=torch.zeros(1))
    assert _no_grads(trunk, heads)


@pytest.mark.parametrize("method", ["equal", "pcgrad"])
def test_nan_loss_is_an_error_naming_the_task(method: str) -> None:
    trunk, heads, x = _net()
    losses = _losses(trunk, heads, x)
    losses[1] = losses[1] * float("nan")
    with pytest.raises(ValueError, match=r"non-finite loss for task\(s\) depth=nan"):
        mtlkit.backward({"seg": losses[0], "depth": losses[1]}, list(trunk.parameters()), weighting=method)
    assert _no_grads(trunk, heads)


def test_non_leaf_shared_params_are_refused() -> None:
    trunk, heads, x = _net()
    moved = [p * 1.0 for p in trunk.parameters()]  # e.g. a .to() copy: its .grad never reaches the leaves
    with pytest.raises(ValueError, match=r"shared_params\[0\] is not a leaf tensor"):
        mtlkit.backward(_losses(trunk, heads, x), moved, weighting="pcgrad")
    with pytest.raises(TypeError, match="shared_params: expected parameters, got the module Linear"):
        mtlkit.backward(_losses(trunk, heads, x), trunk, weighting="pcgrad")  # type: ignore[arg-type]
    assert _no_grads(trunk, heads)


def test_losses_without_grad_or_not_reaching_the_shared_params_are_refused() -> None:
    trunk, heads, x = _net()
    with torch.no_grad():
        frozen = _losses(trunk, heads, x)
    with pytest.raises(ValueError, match="the loss of task 'task0' does not require grad"):
        mtlkit.backward(frozen, list(trunk.parameters()), weighting="equal")
    other = nn.Linear(4, 1)
    losses = _losses(trunk, heads, x)
    losses[0] = other(x).pow(2).mean()  # depends on `other`, not on the trunk
    with pytest.raises(ValueError, match="the loss of task 'task0' does not depend on shared_params"):
        mtlkit.backward(losses, list(trunk.parameters()), weighting="mgda")
    feats = trunk(x)
    with pytest.raises(ValueError, match="the loss of task 'task1' does not depend on features or shared_params"):
        mtlkit.backward(
            [heads[0](feats).pow(2).mean(), other(x).sum()], list(trunk.parameters()), features=feats, weighting="mgda"
        )
    assert _no_grads(trunk, heads, other)


def test_mapping_keys_must_be_the_balancer_tasks() -> None:
    trunk, heads, x = _net()
    balancer = mtlkit.Balancer("pcgrad", tasks=["seg", "depth"])
    losses = _losses(trunk, heads, x)
    with pytest.raises(ValueError, match=r"unknown: \['dpeth'\].*missing: \['depth'\]"):
        balancer.backward({"seg": losses[0], "dpeth": losses[1]}, shared_params=list(trunk.parameters()))
    with pytest.raises(ValueError, match="losses: 1 losses for the Balancer's 2 tasks"):
        balancer.backward(losses[:1], shared_params=list(trunk.parameters()))
    assert _no_grads(trunk, heads)
    # the mapping is read in the Balancer's task order, whatever the order of its keys
    balancer = mtlkit.Balancer("equal", tasks=["seg", "depth"])
    values = balancer.backward({"depth": losses[1], "seg": losses[0]}, shared_params=list(trunk.parameters()))
    assert values.tolist() == [losses[0].item(), losses[1].item()]


# ---------------------------------------------------------------------- mtlkit.fit


class _Samples(torch.utils.data.Dataset):
    """4 samples of 32x32 with the given keys ('seg': 3 classes, 'depth': positive)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        full = {
            "image": torch.rand(3, 32, 32, generator=g),
            "seg": torch.randint(0, 3, (32, 32), generator=g),
            "sgm": torch.randint(0, 3, (32, 32), generator=g),
            "depth": torch.rand(1, 32, 32, generator=g) + 0.5,
        }
        return {k: full[k] for k in self.keys}


class _TwoHeads(nn.Module):
    def __init__(self, names: tuple[str, ...] = ("seg", "depth"), width: int = 4) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, width, 3, padding=1)
        self.heads = nn.ModuleDict({n: nn.Conv2d(width, 3 if n == "seg" else 1, 1) for n in names})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x).relu()
        return {n: head(h) for n, head in self.heads.items()}


def _fit(tmp: Path, train_keys=("image", "seg", "depth"), model: nn.Module | None = None, **kwargs) -> Path:
    tasks = [segmentation_task(3, name="seg"), depth_task("depth")]
    return mtlkit.fit(
        model or _TwoHeads(),
        tasks,
        _Samples(train_keys),
        _Samples(("image", "seg", "depth")),
        batch_size=2,
        device="cpu",
        run_dir=kwargs.pop("run_dir", tmp / "run"),
        **kwargs,
    )


def test_fit_refuses_a_task_no_batch_carries(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"the first batch has no target for task\(s\) 'seg' "
        r"\(its keys: \['depth', 'image', 'sgm'\]\)",
    ):
        _fit(tmp_path, train_keys=("image", "sgm", "depth"))
    with pytest.raises(ConfigError, match="the first batch has no 'image'"):
        _fit(tmp_path, train_keys=("seg", "depth"))
    assert not (tmp_path / "run").exists()


def test_fit_refuses_a_model_without_a_task_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the model's output has no 'depth' \(it returned \['seg'\]\)"):
        _fit(tmp_path, model=_TwoHeads(("seg",)))
    assert not (tmp_path / "run").exists()


def test_fit_refuses_a_run_folder_of_another_fit(tmp_path: Path) -> None:
    run = _fit(tmp_path, max_steps_per_epoch=1)
    (run / "results.json").unlink()  # as if interrupted: a fit of the same objects would continue it
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=r"holds a fit of another run \(weighting 'equal' \(now 'dwa'\)\)"):
        _fit(tmp_path, weighting="dwa", max_steps_per_epoch=1)
    with pytest.raises(TrainingError, match="does not fit this model, method and optimizer"):
        _fit(tmp_path, model=_TwoHeads(width=5), max_steps_per_epoch=1)  # the same class, other shapes
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing left behind


@pytest.mark.parametrize("name", ["../../escape", "/abs/dir/x", "a/b", ".", ""])
def test_fit_name_is_one_folder_name(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"fit\(name=...\)"):
        _fit(tmp_path, name=name, run_dir=None)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- the rest of mtlkit's public API


def test_positional_mix_ups_elsewhere_in_the_api_are_errors() -> None:
    from mtlkit.models import build_model
    from mtlkit.tasks import classification_task

    with pytest.raises(TypeError, match=r"tasks: expected a list of task names .* \(one task: tasks=\['seg'\]\)"):
        mtlkit.Balancer("pcgrad", "seg")
    with pytest.raises(TypeError):
        mtlkit.Balancer("pcgrad", ["seg", "depth"], "representation")  # type: ignore[misc]  mode is keyword-only
    with pytest.raises(ConfigError, match=r"model.width must be a positive number up to 16 \(got 'resnet18_dilated'\)"):
        build_model("mtan", [segmentation_task(3)], "resnet18_dilated")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="build_model: tasks must be a list of Task objects"):
        build_model("mtan", ["seg", "depth"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="task name must be a non-empty string"):
        segmentation_task("seg", 13)  # type: ignore[arg-type]  (num_classes comes first)
    with pytest.raises(ConfigError, match="task name must be a non-empty string"):
        classification_task(10, "digits")  # type: ignore[arg-type]  (name comes first)
    with pytest.raises(TypeError):
        mtlkit.fit(
            _TwoHeads(),
            [segmentation_task(3, name="seg")],
            _Samples(("image", "seg")),
            _Samples(("image", "seg")),
            "pcgrad",
        )  # type: ignore[misc]  everything after val_data: keywords


def test_fit_trains_a_dataset_that_declares_partial_labels(tmp_path: Path) -> None:
    """Batches of one task each are fine when the dataset says so (``partial_labels = True``)."""

    class OneTaskPerBatch(_Samples):
        partial_labels = True

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            sample = super().__getitem__(i)
            return {k: v for k, v in sample.items() if k == "image" or k == ("seg" if i < 2 else "depth")}

    tasks = [segmentation_task(3, name="seg"), depth_task("depth")]
    loader = torch.utils.data.DataLoader(OneTaskPerBatch(("image", "seg", "depth")), batch_size=2)
    run = mtlkit.fit(
        _TwoHeads(),
        tasks,
        loader,
        _Samples(("image", "seg", "depth")),
        batch_size=2,
        device="cpu",
        run_dir=tmp_path / "run",
    )
    assert (run / "results.json").is_file()
    with pytest.raises(ConfigError, match=r"has no target for task\(s\) 'depth'"):  # undeclared: refused
        mtlkit.fit(
            _TwoHeads(),
            tasks,
            torch.utils.data.DataLoader(_Samples(("image", "seg")), batch_size=2),
            _Samples(("image", "seg", "depth")),
            device="cpu",
            run_dir=tmp_path / "other",
        )
