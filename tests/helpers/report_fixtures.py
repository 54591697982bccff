"""Hand-written run folders in the documented format (fake metrics) and fake models for report tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.records import EpochRecord, RunResults
from mtlkit.tasks import Task, depth_task, segmentation_task

SEG = segmentation_task(7).to_dict()
DEPTH = depth_task().to_dict()


def write_run(
    root: Path,
    name: str,
    arch: str,
    weighting: str,
    seed: int,
    final: dict[str, float],
    classes: int = 7,
    epochs: int = 3,
    finished: bool = True,
    params_ratio: float = 1.0,
    extra_config: dict | None = None,
) -> Path:
    """A run folder: config.yaml, metrics.jsonl (``epochs`` epochs ending at ``final``), results.json."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    config = {
        "name": name,
        "out_dir": str(root),
        "seed": seed,
        "dataset": {"name": "scenes", "num_classes": classes, "height": 32, "width": 64},
        "model": {"arch": arch, "width": 0.125},
        "weighting": {"name": weighting},
        "optim": {"lr": 1e-3},
        "train": {"epochs": epochs},
    }
    for section, values in (extra_config or {}).items():
        config[section] = {**config.get(section, {}), **values}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for e in range(1, epochs + 1):
        f = e / epochs
        val = {k: v * (0.5 + 0.5 * f) for k, v in final.items()}
        if weighting == "dwa":
            weights = {"segmentation": 1.0 + 0.1 * (e - 1), "depth": 1.0 - 0.1 * (e - 1)}
        else:
            weights = {"segmentation": 1.0, "depth": 1.0}
        lines.append(
            EpochRecord(
                epoch=e,
                time=2.0 * e,
                epoch_time=2.0,
                lr=1e-3,
                train={"loss/segmentation": 2.0 / e + 0.01 * seed, "loss/depth": 0.8 / e},
                val={"loss/segmentation": 2.2 / e, "loss/depth": 0.9 / e, **val},
                weights=weights,
            ).to_dict()
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "checkpoints" / "last.pt").write_bytes(b"fake")
    if finished:
        seg = {**SEG, "channels": classes}
        results = RunResults(
            name=name,
            arch=arch,
            weighting=weighting,
            dataset="scenes",
            tasks=[seg, DEPTH],
            params=int(1000 * params_ratio),
            params_ratio=params_ratio,
            final=final,
            best=final,
            best_epoch=epochs,
            epochs=epochs,
            wall_time=2.0 * epochs,
            config_hash=f"hash{seed}{arch[:3]}",
            versions={"python": "3.11", "torch": "2.x", "mtlkit": "0.1.0"},
            git_commit="0123456789abcdef",
            machine={"host": "test", "device": "cpu"},
        )
        (run / "results.json").write_text(json.dumps(results.to_dict()))
    return run


def paper_like_runs(root: Path) -> dict[str, Path]:
    """Runs with hand-picked metrics (see tests/report/test_report.py for the hand-computed table)."""

    def m(miou, pix, abs_err, rel_err):
        return {
            "segmentation/miou": miou,
            "segmentation/pix_acc": pix,
            "depth/abs_err": abs_err,
            "depth/rel_err": rel_err,
        }

    return {
        "single0": write_run(root, "single-s0", "single", "equal", 0, m(0.38, 0.60, 0.48, 0.20), params_ratio=2.0),
        "single1": write_run(root, "single-s1", "single", "equal", 1, m(0.42, 0.60, 0.52, 0.20), params_ratio=2.0),
        "stan0": write_run(root, "stan-s0", "stan", "equal", 0, m(0.39, 0.58, 0.50, 0.21), params_ratio=2.9),
        "split0": write_run(
            root, "split_wide-dwa-s0", "split_wide", "dwa", 0, m(0.36, 0.54, 0.55, 0.18), params_ratio=1.2
        ),
        "stitch0": write_run(
            root, "cross_stitch-s0", "cross_stitch", "equal", 0, m(0.37, 0.59, 0.51, 0.205), params_ratio=2.0
        ),
        "mtan0": write_run(root, "mtan-s0", "mtan", "equal", 0, m(0.44, 0.66, 0.45, 0.22), params_ratio=1.2),
        "mtan1": write_run(root, "mtan-s1", "mtan", "equal", 1, m(0.42, 0.60, 0.50, 0.20), params_ratio=1.2),
    }


class FakeAttentionNet(MultiTaskModel):
    """A tiny MTAN-like model: per-task sigmoid masks at two encoder and one decoder block."""

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__(tasks)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.heads = nn.ModuleDict({t.name: nn.Conv2d(4, t.channels, 1) for t in tasks})

    def encode(self, x: Tensor) -> list[Tensor]:
        return [torch.relu(self.conv(x))]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        h = reps[0]
        out = {}
        for i, t in enumerate(self.tasks):
            if tasks is not None and t.name not in tasks:
                continue
            for block, scale in (("enc0", 1), ("enc1", 2), ("dec1", 2)):
                mask = torch.sigmoid(nn.functional.avg_pool2d(h, scale) * (i + 1))
                self.record(f"attention/{t.name}/{block}", mask)
            out[t.name] = self.heads[t.name](h)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.conv.parameters())


class FakeStitchNet(FakeAttentionNet):
    """Adds cross-stitch alphas: a K x K matrix and a per-channel K x K x C one."""

    def stitch_alphas(self) -> dict[str, Tensor]:
        return {
            "enc0": torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
            "dec1": torch.tensor([[0.7, 0.3], [0.4, 0.6]])[:, :, None].repeat(1, 1, 4),
        }


class FakeBuilder:
    """A dataset builder whose val split holds a few random samples with both targets."""

    splits = ("train", "val")

    def __init__(self, classes: int = 7) -> None:
        self.classes = classes

    def dataset(self, split: str, train: bool) -> list[dict[str, Tensor]]:
        g = torch.Generator().manual_seed(0)
        return [
            {
                "image": torch.rand(3, 32, 64, generator=g),
                "segmentation": torch.randint(-1, self.classes, (32, 64), generator=g),
                "depth": torch.rand(1, 32, 64, generator=g),
            }
            for _ in range(3)
        ]


def fake_loader(run_dir: Path) -> tuple:
    """Stands in for the trainer's load_run: a fake model of the run's architecture kind."""
    results = json.loads((run_dir / "results.json").read_text())
    tasks = [segmentation_task(7), depth_task()]
    cls = FakeStitchNet if results["arch"] == "cross_stitch" else FakeAttentionNet
    torch.manual_seed(0)
    return None, cls(tasks).eval(), tasks, FakeBuilder()
