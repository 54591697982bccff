"""Adding a task kind, an architecture and a weighting method is one file each plus one import line.

The three files below are written as a user (or a contributor, into ``mtlkit/tasks``,
``mtlkit/models``, ``mtlkit/weighting``) would write them; importing each registers it, and a
config then names all three and trains through ``mtlkit train`` on a folder dataset.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.registry import ARCHITECTURES, TASK_KINDS, WEIGHTINGS

KIND_FILE = '''
"""Per-pixel regression with the smooth-L1 (Huber) loss; metrics as the regression kind."""
import torch.nn.functional as F

from mtlkit.registry import TASK_KINDS
from mtlkit.tasks.regression import Regression


@TASK_KINDS.register("smooth_l1")
class SmoothL1(Regression):
    name = "smooth_l1"

    def loss(self, task, pred, target):
        return F.smooth_l1_loss(pred.float(), target)
'''

ARCH_FILE = '''
"""A two-layer shared trunk with one 1x1 conv head per task."""
from torch import nn

from mtlkit.models.base import MultiTaskModel
from mtlkit.registry import ARCHITECTURES


@ARCHITECTURES.register("tiny_hps")
class TinyHPS(MultiTaskModel):
    records = ()
    single_task_reference = None

    def __init__(self, tasks, width=1.0, *, in_channels=3):
        super().__init__(tasks)
        c = max(4, round(16 * width))
        self.trunk = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.heads = nn.ModuleDict({t.name: nn.Conv2d(c, t.channels, 1) for t in tasks})

    def encode(self, x):
        return [self.trunk(x)]

    def decode(self, reps, tasks=None):
        names = tasks if tasks is not None else [t.name for t in self.tasks]
        return {n: self.heads[n](reps[0]) for n in names}

    def shared_parameters(self):
        return list(self.trunk.parameters())
'''

WEIGHTING_FILE = '''
"""Fixed task weights given in the config: L = sum_k w_k L_k."""
import torch

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting.base import Weighting


@WEIGHTINGS.register("fixed")
class Fixed(Weighting):
    def __init__(self, task_names, weights=None):
        super().__init__(task_names)
        self.register_buffer("w", torch.tensor(weights or [1.0] * len(task_names)), persistent=False)

    def combine(self, losses):
        self.last_weights = self.w.clone()
        return (self.w * losses).sum()
'''


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory):
    """Write the three files into a package and import each (the one line per addition)."""
    root = tmp_path_factory.mktemp("ext")
    pkg = root / "my_mtl_ext"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in (("smooth_l1", KIND_FILE), ("tiny_hps", ARCH_FILE), ("fixed", WEIGHTING_FILE)):
        (pkg / f"{name}.py").write_text(textwrap.dedent(text))
    sys.path.insert(0, str(root))
    try:
        for name in ("smooth_l1", "tiny_hps", "fixed"):
            importlib.import_module(f"my_mtl_ext.{name}")
        yield
    finally:
        sys.path.remove(str(root))
        # leave the registries as the other tests expect them (only the built-ins)
        for registry, name in ((TASK_KINDS, "smooth_l1"), (ARCHITECTURES, "tiny_hps"), (WEIGHTINGS, "fixed")):
            registry._items.pop(name, None)
        for name in ("my_mtl_ext.smooth_l1", "my_mtl_ext.tiny_hps", "my_mtl_ext.fixed", "my_mtl_ext"):
            sys.modules.pop(name, None)


@pytest.mark.slow
def test_one_file_each_then_train_by_name(extension, tmp_path: Path) -> None:
    from helpers.folders import write_folder
    from mtlkit.cli.main import main

    assert "smooth_l1" in TASK_KINDS and "tiny_hps" in ARCHITECTURES and "fixed" in WEIGHTINGS
    write_folder(
        tmp_path / "data",
        "tasks:\n  - {name: seg, kind: segmentation, channels: 3, "
        "options: {ignore_index: 255}}\n  - {name: height, kind: smooth_l1, channels: 1}\n",
        n_train=4,
        n_val=2,
    )
    for split in ("train", "val"):
        (tmp_path / "data" / split / "height").mkdir()
        for img in sorted((tmp_path / "data" / split / "images").iterdir()):
            from PIL import Image

            h, w = np.asarray(Image.open(img)).shape[:2]
            np.save(
                tmp_path / "data" / split / "height" / f"{img.stem}.npy",
                np.linspace(0, 1, h * w, dtype=np.float32).reshape(1, h, w),
            )
    run = tmp_path / "run"
    args = [
        "train",
        "dataset.name=folder",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.height=32",
        "dataset.width=32",
        "model.arch=tiny_hps",
        "weighting.name=fixed",
        "weighting.options.weights=[1.0, 0.5]",
        "train.epochs=1",
        "train.batch_size=2",
        "train.progress=false",
        "train.loggers=[]",
        f"out_dir={tmp_path}",
        "--run-dir",
        str(run),
    ]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["arch"] == "tiny_hps" and results["weighting"] == "fixed"
    assert [t["kind"] for t in results["tasks"]] == ["segmentation", "smooth_l1"]
    assert set(results["final"]) >= {"seg/miou", "height/mae", "height/rmse"}
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["weights"] == {"seg": 1.0, "height": 0.5}
    assert results["params_ratio"] is None  # the new architecture declares no single-task reference
    loss = TASK_KINDS.get("smooth_l1")().make("h", 1).loss(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0))
    assert float(loss) == pytest.approx(2.5)  # Huber with beta 1 at |e| = 3
