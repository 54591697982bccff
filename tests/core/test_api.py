"""Your own data and loop: the folder dataset, the own-data guide's worked example, mtlkit.fit and mtlkit.backward."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtlkit
from helpers.folders import write_folder
from mtlkit.cli.main import main
from mtlkit.config import DatasetConfig
from mtlkit.data.check import check_dataset
from mtlkit.data.folder import FolderBuilder
from mtlkit.errors import ConfigError, DataError

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "own-data.md"
FOLDER_SECTION = "1. A folder of images and targets: `dataset.name=folder`"


def _section(title: str) -> str:
    text = GUIDE.read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.fixture
def my_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The guide's ``my_data`` folder, written in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    (tasks_yaml,) = _blocks(_section(FOLDER_SECTION), "yaml")
    write_folder(tmp_path / "my_data", tasks_yaml)
    return tmp_path / "my_data"


def test_folder_dataset_samples(my_data: Path) -> None:
    builder = FolderBuilder(DatasetConfig(name="folder", root=str(my_data), height=32, width=32))
    seg, fg = builder.tasks()
    assert (seg.kind, seg.channels, fg.kind, fg.channels) == ("segmentation", 3, "binary", 1)
    ds = builder.dataset("train", train=False)
    sample = ds[0]  # stored 40x56, resized to 32x32
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["seg"].shape == (32, 32) and sample["seg"].dtype == torch.int64
    assert set(sample["seg"].unique().tolist()) <= {0, 1, 2, 255}
    assert set(sample["fg"].unique().tolist()) <= {0, 1}  # 0/255 masks read as 0/1
    assert torch.equal(sample["fg"] == 1, sample["seg"] == 2)  # both targets resampled at the same pixels
    crop = FolderBuilder(
        DatasetConfig(name="folder", root=str(my_data), height=32, width=32, options={"fit": "crop"})
    ).dataset("train", train=False)[0]
    assert crop["seg"].shape == (32, 32)
    aug = FolderBuilder(DatasetConfig(name="folder", root=str(my_data), height=32, width=32, augment=True))
    a, b = aug.dataset("train", train=True)[1], aug.dataset("train", train=True)[1]
    assert torch.equal(a["seg"], b["seg"])  # augmentation depends on (seed, epoch, index) only


def test_folder_problems_are_one_line_naming_the_file(my_data: Path) -> None:
    assert check_dataset("folder", my_data).ok
    bad = np.full((40, 56), 7, np.uint8)
    Image.fromarray(bad).save(my_data / "train" / "seg" / "train000.png")  # label 7 of 3 classes
    (my_data / "train" / "fg" / "train001.png").unlink()  # missing target
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(my_data / "train" / "fg" / "stray.png")  # extra stem
    (my_data / "val" / "images" / "val000.png").write_bytes(b"not a png")  # unreadable
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(my_data / "train" / "seg" / "train002.png")  # RGB labels
    report = check_dataset("folder", my_data)
    text = "\n".join(report.problems)
    assert "train000.png: label map holds label(s) [7] outside [0, 3)" in text
    assert "train/fg/train001.png: missing" in text
    assert "stray.png: no image with this name" in text
    assert "val000.png: unreadable" in text
    assert "train002.png: label map must be (H, W), got shape (48, 48, 3)" in text
    assert all("\n" not in p for p in report.problems)
    ds = FolderBuilder(DatasetConfig(name="folder", root=str(my_data), height=32, width=32))
    with pytest.raises(DataError, match="train001.png: missing target"):
        ds.dataset("train", train=False)
    (my_data / "tasks.yaml").write_text("tasks:\n  - {name: seg, kind: segmentation}\n")
    with pytest.raises(ConfigError, match="tasks.yaml: task 'seg' of kind 'segmentation': needs channels"):
        FolderBuilder(DatasetConfig(name="folder", root=str(my_data))).tasks()


def test_nan_regression_target_is_named(tmp_path: Path) -> None:
    write_folder(
        tmp_path,
        "tasks:\n  - {name: seg, kind: segmentation, channels: 3, options: {ignore_index: 255}}\n"
        "  - {name: fg, kind: binary}\n  - {name: height, kind: regression, channels: 2}\n",
        n_train=1,
        n_val=1,
    )
    for split in ("train", "val"):
        (tmp_path / split / "height").mkdir()
        stem = f"{split}000"
        h, w = np.asarray(Image.open(tmp_path / split / "images" / f"{stem}.png")).shape[:2]
        value = np.zeros((2, h, w), np.float32)
        value[1, 3, 3] = np.nan if split == "val" else 0
        np.save(tmp_path / split / "height" / f"{stem}.npy", value)
    problems = check_dataset("folder", tmp_path).problems
    assert problems == [
        f"{tmp_path / 'val' / 'height' / 'val000.npy'}: target holds NaN/inf "
        "(set the task's invalid_value to mark missing values)"
    ]


@pytest.mark.slow
def test_guide_own_data_example_runs(my_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's commands, as written, on the folder the test wrote; then its Python block, which writes its own."""
    own = _section(FOLDER_SECTION)
    (bash,) = _blocks(own, "bash")
    for command in bash.replace("\\\n", " ").splitlines():
        assert command.startswith("mtlkit ")
        assert main(shlex.split(command)[1:]) == 0, command
    results = json.loads(Path("runs/my_data/results.json").read_text())
    assert [t["kind"] for t in results["tasks"]] == ["segmentation", "binary"]
    for key in ("seg/miou", "seg/iou_thing", "fg/iou", "fg/max_f"):
        assert np.isfinite(results["final"][key]), key
    (block,) = _blocks(own, "python")
    (my_data.parent / "fit").mkdir()
    monkeypatch.chdir(my_data.parent / "fit")
    namespace: dict = {}
    exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide's own example
    fit_results = json.loads((namespace["run"] / "results.json").read_text())
    assert fit_results["status"] == "finished" and fit_results["weighting"] == "dwa"
    assert len((namespace["run"] / "metrics.jsonl").read_text().splitlines()) == 1  # epochs=1
    monkeypatch.chdir(my_data.parent)
    # the report of the `mtlkit train` run: per-task columns and the attention figure with both tasks
    assert main(["report", "runs/my_data", "--out", "report", "--attention-images", "1"]) == 0
    text = Path("report/report.md").read_text()
    assert "folder: seg (3 classes), fg" in text  # table labels from the task kinds
    # column groups by the task's kind (segmentation: the paper's heading; binary has none: the task's name),
    # then after its metrics the kind's shown-only ones (‡: not in Δm)
    assert (
        "| Segmentation: mIoU ↑ | Segmentation: Pix Acc ↑ | Segmentation: Mean Acc‡ ↑ | Segmentation: fwIoU‡ ↑ "
        "| fg: IoU ↑ | fg: max F ↑ |"
    ) in text
    assert any(p.name.startswith("attention_") for p in Path("report/figures").iterdir())


# ---------------------------------------------------------------------- mtlkit.backward


def _loop_losses(cfg, method: str) -> list[dict[str, float]]:
    """A hand-written loop with mtlkit.backward; per-epoch mean training losses."""
    from mtlkit.data.sampling import make_loader
    from mtlkit.models import build_model
    from mtlkit.registry import DATASETS
    from mtlkit.train.runtime import seed_everything

    seed_everything(cfg.seed)
    data = DATASETS.get(cfg.dataset.name)(cfg.dataset)
    tasks = data.tasks()
    model = build_model(cfg.model.arch, tasks, width=cfg.model.width)
    balancer = mtlkit.Balancer(method, tasks=[t.name for t in tasks])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, fused=True)
    loader = make_loader(data.dataset("train", train=True), cfg.train.batch_size, train=True, seed=cfg.seed)
    history = []
    for epoch in range(cfg.train.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        sums = torch.zeros(len(tasks))
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            out = model(batch["image"])
            losses = [t.loss(out[t.name], batch[t.name]) for t in tasks]
            sums += balancer.backward(losses, shared_params=model.shared_parameters())
            optimizer.step()
        history.append({f"loss/{t.name}": float(v) / len(loader) for t, v in zip(tasks, sums)})
        balancer.weighting.epoch_end(epoch, sums / len(loader))
    return history


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
def test_backward_loop_matches_mtlkit_train(tiny_cfg, method: str) -> None:
    from mtlkit.train.trainer import train

    cfg = tiny_cfg(weighting={"name": method}, optim={"lr": 1e-3, "step_size": 100})
    run = train(cfg, run_dir=Path(cfg.out_dir) / method)
    logged = [json.loads(line)["train"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    mine = _loop_losses(cfg, method)
    assert len(mine) == len(logged) == 2
    for a, b in zip(mine, logged):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert mine[1] != pytest.approx(mine[0])  # it trained


def test_backward_fills_every_parameter_and_equals_the_sum_for_equal() -> None:
    torch.manual_seed(0)
    trunk, heads = torch.nn.Linear(4, 3), torch.nn.ModuleList([torch.nn.Linear(3, 1) for _ in range(2)])
    x = torch.randn(5, 4)
    feats = trunk(x)
    losses = [h(feats).pow(2).mean() for h in heads]
    mtlkit.backward(losses, shared_params=list(trunk.parameters()), weighting="pcgrad")
    got = [p.grad.clone() for p in (*trunk.parameters(), *heads.parameters())]
    for p in (*trunk.parameters(), *heads.parameters()):
        p.grad = None
    feats = trunk(x)
    sum(h(feats).pow(2).mean() for h in heads).backward()
    want = [p.grad for p in (*trunk.parameters(), *heads.parameters())]
    # heads: their own task's gradient; trunk: PCGrad's combination (equal to the sum when gradients agree)
    for g, w in zip(got[2:], want[2:]):
        assert torch.allclose(g, w)
    assert all(g is not None and g.shape == w.shape for g, w in zip(got, want))
    # features mode: gradients w.r.t. the shared representation reach the trunk through one backward
    for p in (*trunk.parameters(), *heads.parameters()):
        p.grad = None
    feats = trunk(x)
    mtlkit.backward(
        [h(feats).pow(2).mean() for h in heads],
        shared_params=list(trunk.parameters()),
        features=feats,
        weighting="mgda",
    )
    assert all(p.grad is not None for p in (*trunk.parameters(), *heads.parameters()))
