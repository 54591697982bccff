"""The demo's training trajectory, pinned: what ``make demo`` trains, not only the model it builds.

The SegNet checksums pin the function each architecture computes; this pins the training: the
demo preset (MTAN, equal weighting, Adam, its step schedule) on the built-in scenes at a tiny size,
run through ``mtlkit train``'s own path (config -> build -> render/cache -> augmentation -> sampler
-> step -> optimizer -> scheduler -> evaluation). The per-step losses, the learning rate of each
step and the first epoch's validation losses are compared with values computed once, so a change
to the data, the augmentation draws, the sample order, the initialisation, a loss, the update or
the schedule fails ``make test`` instead of moving the README's demo numbers weeks later.

Why float64, and how far a rounding difference moves the losses
----------------------------------------------------------------
The reference run is the same computation in float64 (model and floating sample tensors cast; the
losses and the evaluation keep float64, :func:`mtlkit.tasks.base.loss_precision`). A different
summation order (thread count, SIMD width, BLAS/oneDNN blocking) changes one operation's result by
at most ``n * u`` relative, ``u`` the unit roundoff and ``n`` the longest sum: here the BatchNorm
statistics and the loss means over N*H*W = 4*32*64 = 8192 terms, so ``DELTA = 8192 * 2**-53 =
9.1e-13``. Training amplifies such a perturbation. Perturbing every initial weight by a random
relative +-delta moved step k's losses by ``A_k * delta``, the same ratios for delta = 1e-13 and
1e-10 (the linear regime): measured A = 0.16, 81, 240 for steps 1-3 and 38 for the first epoch's
validation losses (after two updates), taken here as 0.2, 100, 300 and 50. The tolerance of step
k is ``SAFETY * max(A_k, 1) * DELTA`` with ``SAFETY = 10``: rounding enters at every operation of
every step, not only at the start, but with that growth the later contributions are smaller than
the first; the rest is margin. At step 4 the response stops being linear (2.2e3 * delta for
delta = 1e-13, 1.4e6 * delta for 1e-10: a rounding-sized change decides a discrete event, such as
which element of a pooling window is the largest), so steps from 4 on are not pinned: no
tolerance derived from rounding holds there. The same chaos is why the demo's epoch-10 numbers
differ between machines and thread counts (the README's demo table).

float32, what users run, is checked where a float32 bound means something: the first step's
losses (one forward pass at the pinned data and initial weights) within ``8192 * 2**-24 = 4.9e-4``
relative, the worst-case error of the longest float32 sum (measured: 6e-8). From the second step
on, float32 runs differ from the float64 ones by 5e-4 (step 2) to 5e-3 (step 4): Adam's first
update turns rounding-sized gradient differences into different steps. They are not pinned.

The rendered scenes are float32 files; a one-ulp difference in them (numpy's vectorised sin/cos
can differ in the last bit between CPU instruction sets) is a perturbation of ~6e-8, far outside
the linear regime. :func:`test_tiny_demo_data_is_pinned` checks the data on their own, so a
failure says which of the two changed: the data, or what training does with them.

The float64 and float32 checks run with 1 and with 2 threads (set here, whatever
``OMP_NUM_THREADS`` says).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from mtlkit.catalog import resolve
from mtlkit.config import Config, load_config
from mtlkit.registry import DATASETS
from mtlkit.train import step as step_module
from mtlkit.train import trainer as trainer_module

#: the demo preset at a tiny size: 2 epochs of 2 steps, the step schedule halving lr after epoch 1
TINY = [
    "dataset.height=32",
    "dataset.width=64",
    "dataset.n_train=8",
    "dataset.n_val=4",
    "train.batch_size=4",
    "train.epochs=2",
    "optim.step_size=1",
    "train.progress=false",
    "train.loggers=[]",
]
STEPS = 3  # pinned steps (see the module docstring for why not more)
TASKS = ("segmentation", "depth", "normal")

U64, U32 = 2.0**-53, 2.0**-24
N_SUM = 4 * 32 * 64  # the longest sums: BatchNorm statistics and loss means over N*H*W
DELTA = N_SUM * U64
SAFETY = 10.0
#: measured amplification of a relative perturbation of the initial weights, per pinned step
AMPLIFICATION = (0.2, 100.0, 300.0)
AMPLIFICATION_VAL = 50.0  # the first epoch's validation losses, after two updates
RTOL_STEP = tuple(SAFETY * max(a, 1.0) * DELTA for a in AMPLIFICATION)
RTOL_VAL = SAFETY * AMPLIFICATION_VAL * DELTA
RTOL_FLOAT32_FIRST_STEP = N_SUM * U32

# float64 reference, computed once with this file's trajectory() (threads 1)
EXPECTED_LOSSES = (
    (2.561920801112816, 3.432114095034051, 1.3142831184628654),
    (2.551002979375623, 3.2572440775578353, 1.2752541527143881),
    (2.5311074709978874, 2.821533558046884, 1.2668642083168966),
)
EXPECTED_LR = (1e-3, 1e-3, 5e-4, 5e-4)
EXPECTED_VAL_EPOCH1 = {"segmentation": 2.568352037545119, "depth": 3.057135188718976, "normal": 1.3005050427179903}


@dataclass
class Trajectory:
    """What one short training run did: per-step losses (K each) and lr, per-epoch validation losses."""

    losses: list[list[float]]
    lrs: list[float]
    val_losses: list[dict[str, float]]


class Float64Samples(Dataset):
    """A dataset whose floating tensors (image, depth, normals) come as float64; set_epoch passed on."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v.double() if v.is_floating_point() else v for k, v in self.inner[index].items()}


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_config(cache: Path, out: Path, extra: list[str] | None = None) -> Config:
    """The demo preset at the tiny size (scenes cached in ``cache``, runs under ``out``)."""
    return load_config(resolve("demo"), [f"dataset.root={cache}", f"out_dir={out}", *TINY, *(extra or [])])


def trajectory(cfg: Config, monkeypatch: pytest.MonkeyPatch, float64: bool) -> Trajectory:
    """Train ``cfg`` with ``mtlkit train``'s code, recording every step's losses and lr.

    ``float64``: the model built by the trainer is cast to float64 and so are the samples of both
    splits; nothing else changes (same seeding, sampler, augmentation, optimizer, schedule).
    """
    losses: list[list[float]] = []
    lrs: list[float] = []
    original_step = step_module.StepRunner.__call__
    original_build = trainer_module.build

    def observed_step(self, batch):
        lrs.append(self.optimizer.param_groups[0]["lr"])
        out = original_step(self, batch)
        losses.append([float(v) for v in out])
        return out

    def build_float64(cfg, device=None):
        setup = original_build(cfg, device)
        setup.model.double()
        make_dataset = setup.builder.dataset
        setup.builder.dataset = lambda *a, **k: Float64Samples(make_dataset(*a, **k))
        return setup

    with monkeypatch.context() as patch:
        patch.setattr(step_module.StepRunner, "__call__", observed_step)
        if float64:
            patch.setattr(trainer_module, "build", build_float64)
        run = trainer_module.train(cfg)
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    val = [{t: r["val"][f"loss/{t}"] for t in TASKS} for r in records]
    return Trajectory(losses, lrs, val)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_float64_trajectory_is_pinned(scenes_cache, tmp_path, monkeypatch, n_threads):
    with threads(n_threads):
        got = trajectory(demo_config(scenes_cache, tmp_path), monkeypatch, float64=True)
    assert got.lrs == list(EXPECTED_LR)  # exact: the schedule is no float computation
    assert len(got.losses) == len(EXPECTED_LR)
    for k in range(STEPS):
        for name, value, expected in zip(TASKS, got.losses[k], EXPECTED_LOSSES[k]):
            assert _rel(value, expected) <= RTOL_STEP[k], (
                f"step {k + 1} {name} loss {value!r} != pinned {expected!r} (rtol {RTOL_STEP[k]:.1e}): "
                "what the demo trains changed"
            )
    for name in TASKS:
        value, expected = got.val_losses[0][name], EXPECTED_VAL_EPOCH1[name]
        assert _rel(value, expected) <= RTOL_VAL, f"epoch 1 validation {name} loss {value!r} != {expected!r}"


@pytest.mark.parametrize("n_threads", [1, 2])
def test_float32_first_step_matches_the_float64_reference(scenes_cache, tmp_path, monkeypatch, n_threads):
    cfg = demo_config(scenes_cache, tmp_path, ["train.epochs=1", "train.max_steps_per_epoch=1"])
    with threads(n_threads):
        got = trajectory(cfg, monkeypatch, float64=False)
    for name, value, expected in zip(TASKS, got.losses[0], EXPECTED_LOSSES[0]):
        assert _rel(value, expected) <= RTOL_FLOAT32_FIRST_STEP, f"float32 step 1 {name}: {value!r} vs {expected!r}"


def test_a_small_change_to_training_is_caught(scenes_cache, tmp_path, monkeypatch):
    """A learning rate 0.1 % off (a change far smaller than a refactor's slip) misses the pins."""
    cfg = demo_config(scenes_cache, tmp_path, ["optim.lr=1.001e-3", "train.epochs=1"])
    with threads(1):
        got = trajectory(cfg, monkeypatch, float64=True)
    # the first step has no update yet
    assert got.losses[0] == pytest.approx(list(EXPECTED_LOSSES[0]), rel=RTOL_STEP[0])
    assert max(_rel(v, e) for v, e in zip(got.losses[1], EXPECTED_LOSSES[1])) > 100 * RTOL_STEP[1]


def data_fingerprint(cfg: Config) -> dict[str, list[float]]:
    """Per split, as stored (no augmentation): image sum and sum of squares, depth sum, normals' abs-sum."""
    builder = DATASETS.get(cfg.dataset.name)(cfg.dataset)
    out: dict[str, list[float]] = {}
    for split in ("train", "val"):
        ds = builder.dataset(split, train=False)
        samples = [ds[i] for i in range(len(ds))]
        image = torch.stack([s["image"] for s in samples]).double()
        depth = torch.stack([s["depth"] for s in samples]).double()
        normal = torch.stack([s["normal"] for s in samples]).double()
        out[split] = [float(image.sum()), float((image * image).sum()), float(depth.sum()), float(normal.abs().sum())]
    return out


#: sums of non-negative float32 values: a change of a few ulps (2**-23 relative each) in every value
#: moves them by as much relative (squares: twice); 8 ulps leaves room for the transcendental
#: functions of the renderer, while any change to what is rendered moves them far more
RTOL_DATA = 8 * 2.0**-23
EXPECTED_DATA = {
    "train": [24649.428309759125, 14909.57963507301, 56409.67139327526, 21386.024128215155],
    "val": [11882.149477975443, 7030.402794747973, 25617.373300671577, 11323.181074769702],
}


def test_tiny_demo_data_is_pinned(scenes_cache, tmp_path):
    got = data_fingerprint(demo_config(scenes_cache, tmp_path))
    for split, values in EXPECTED_DATA.items():
        assert got[split] == pytest.approx(values, rel=RTOL_DATA), f"the rendered {split} scenes changed"
